"""The package map of docs/architecture.md holds: every package of app/ is on it, and no package imports
one above it (import-linter's contracts in pyproject.toml, checked as `make lint` checks them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.data import REPO_ROOT

DATA_PACKAGES = {"assets", "static"}  # files, no code


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def layered_packages() -> set[str]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return {name.strip().removeprefix("app.") for layer in layers["layers"] for name in layer.split("|")}


def test_every_package_of_app_is_on_the_map() -> None:
    packages = {p.parent.name for p in (REPO_ROOT / "app").glob("*/__init__.py")} - DATA_PACKAGES
    assert packages == layered_packages()


def test_the_layers_and_the_torch_free_serving_path_hold() -> None:
    done = lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    # The same check on a copy of app/ where core imports the HTTP layer: it must fail, naming it.
    shutil.copytree(REPO_ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("static", "assets"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    ids = tmp_path / "app" / "core" / "ids.py"
    ids.write_text(ids.read_text() + "\nfrom app.api.factory import create_app  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "app.core.ids -> app.api.factory" in done.stdout
