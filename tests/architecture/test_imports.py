"""The serving path (everything under app/ but the model code and the exporters) never imports torch (nor
matplotlib, which only `voxgate eval --plot` uses): the runtime image installs neither."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import app
from tests.support.data import REPO_ROOT

TORCH_SIDE = ("app.modeling", "app.export")


def serving_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(app.__path__, "app.")]
    # ``__main__`` modules run a command when imported.
    return sorted(n for n in names if not n.startswith(TORCH_SIDE) and not n.endswith(".__main__"))


def test_serving_modules_are_found() -> None:
    names = serving_modules()
    for expected in (
        "app.api.factory",
        "app.server.serve",
        "app.engine.engine",
        "app.store.redis_store",
        "app.audio.decode",
    ):
        assert expected in names


def test_importing_the_serving_path_loads_no_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {serving_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "from app.api.factory import create_app\n"
        "from app.core.settings import Settings\n"
        "create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "heavy = ('torch', 'matplotlib')  # the runtime image has neither (matplotlib: voxgate eval --plot)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not leaked, leaked[:5]\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
