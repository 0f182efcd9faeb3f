"""Locations inside the repository / installed tree."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "default"
