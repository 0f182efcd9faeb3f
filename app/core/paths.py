"""Locations inside the repository / installed tree, whether an output can be written, and a file's hash."""

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "default"


def unwritable(path: Path) -> str | None:
    """Why the file ``path`` cannot be written (None when it can): checked before long work that
    writes it at the end."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"cannot write {path} (a folder)"
    if not folder.is_dir():
        return f"cannot write {path} (no such folder)"
    if not os.access(path if path.exists() else folder, os.W_OK):
        return f"cannot write {path} (permissions)"
    return None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (model graphs are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
