"""Regenerate the Python client (clients/python) from the service's OpenAPI document, or check that the
committed client is what the generator makes of today's document (``--check``, run by the tests).

    .venv/bin/python scripts/python_client.py           # `make client`: rewrite openapi.json and the code
    .venv/bin/python scripts/python_client.py --check   # exit 1, naming what differs, on any drift

The document is the one a service with the default settings and keys required serves (the keys-off
variant only leaves out the 401 answers and the security schemes). The code under
``voxgate_client/generated`` is openapi-python-client's output (the version pinned in the dev extra),
formatted by its post-hooks; the rest of ``voxgate_client`` is written by hand over it.

Formatting is the only step that depends on another tool's version (ruff, unpinned): the check formats
both the fresh output and a copy of the committed code with today's ruff before comparing them, so a new
ruff release is not reported as drift.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CLIENT_DIR = REPO / "clients" / "python"
DOCUMENT = "openapi.json"
CONFIG = "generator.yaml"
GENERATED = Path("voxgate_client") / "generated"


def service_document() -> dict[str, Any]:
    """The OpenAPI document of a service with the default settings (whatever this environment sets)
    and keys required."""
    from app.api.factory import create_app
    from app.core.settings import Settings

    # model_construct: the defaults, not VOXGATE_* variables of this shell; Redis is never contacted.
    settings = Settings.model_construct(redis_url="redis://127.0.0.1:6379/0", auth="required")
    document: dict[str, Any] = create_app(settings).openapi()
    return document


def document_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _tool_env() -> dict[str, str]:
    # The post-hooks run `ruff` by name: this interpreter's scripts directory (the venv) comes first.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def _post_hooks(config: Path) -> list[str]:
    hooks: list[str] = yaml.safe_load(config.read_text(encoding="utf-8"))["post_hooks"]
    return hooks


def generate(document: Path, config: Path, out: Path) -> None:
    """openapi-python-client's package for ``document`` written to ``out`` (which must not exist)."""
    run = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
         "--config", str(config), "--meta", "none", "--output-path", str(out)],
        env=_tool_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # The generator reports unsupported parts of a document as warnings and still exits 0.
    if run.returncode != 0 or "Warning" in run.stdout + run.stderr or not (out / "client.py").is_file():
        raise SystemExit(f"openapi-python-client failed:\n{run.stdout}\n{run.stderr}")


def format_tree(tree: Path, config: Path) -> None:
    """Run the generator's post-hooks (ruff) in ``tree``, as the generator does after writing it."""
    for hook in _post_hooks(config):
        subprocess.run(
            hook, shell=True, cwd=tree, env=_tool_env(), capture_output=True, check=True, timeout=120
        )


def differences(left: Path, right: Path) -> list[str]:
    """Files that are not the same in the two trees (relative paths)."""
    found: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: Path) -> None:
        found.extend(str(prefix / name) for name in cmp.left_only + cmp.right_only + cmp.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        found.extend(str(prefix / name) for name in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, prefix / name)

    walk(filecmp.dircmp(left, right, ignore=["__pycache__"]), Path())
    return sorted(found)


def check(client_dir: Path) -> list[str]:
    """What differs between the committed client and what today's document and generator give."""
    problems = []
    committed = json.loads((client_dir / DOCUMENT).read_text(encoding="utf-8"))
    if committed != service_document():
        problems.append(f"{DOCUMENT} is not the service's document")
    config = client_dir / CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        fresh, kept = Path(tmp) / "fresh", Path(tmp) / "committed"
        generate(client_dir / DOCUMENT, config, fresh)
        shutil.copytree(client_dir / GENERATED, kept, ignore=shutil.ignore_patterns("__pycache__"))
        format_tree(kept, config)
        problems += [f"{GENERATED / name} differs" for name in differences(fresh, kept)]
    return problems


def write(client_dir: Path) -> None:
    (client_dir / DOCUMENT).write_text(document_text(service_document()), encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "generated"
        generate(client_dir / DOCUMENT, client_dir / CONFIG, fresh)
        shutil.rmtree(client_dir / GENERATED, ignore_errors=True)
        shutil.copytree(fresh, client_dir / GENERATED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report drift instead of rewriting")
    parser.add_argument("--client-dir", type=Path, default=CLIENT_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.check:
        write(args.client_dir)
        print(f"regenerated {args.client_dir / DOCUMENT} and {args.client_dir / GENERATED}")
        return 0
    problems = check(args.client_dir)
    for problem in problems:
        print(f"drift: {problem}", file=sys.stderr)
    if problems:
        print("run `make client` and commit the result", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
