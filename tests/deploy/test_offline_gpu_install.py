"""scripts/offline-gpu-install.sh, the parts that run without a package index or a GPU: what `download`
fetches (the checkout's requirements and the image's onnxruntime-gpu pin), and `install` refusing a
damaged, incomplete or padded folder before it installs anything. (A full download and offline install
was run by hand; docs/performance.md says where.)"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.data import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "offline-gpu-install.sh"


def run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_requirements_are_the_checkouts_with_the_images_onnxruntime() -> None:
    listed = run("requirements")
    assert listed.returncode == 0, listed.stderr
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pin = re.search(
        r"^ARG ORT_PACKAGE=(onnxruntime-gpu==[0-9.]+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M
    )
    assert pin is not None
    expected = [
        *project["project"]["dependencies"],
        pin.group(1),
        *project["build-system"]["requires"],
    ]
    assert listed.stdout.splitlines() == expected
    assert not any(line.startswith(("torch", "onnx>", "onnxruntime>")) for line in expected)


def wheel_folder(folder: Path, parts: int = 0) -> Path:
    """A folder as `download` leaves it: one wheel (split into ``parts`` when given) and SHA256SUMS."""
    folder.mkdir()
    wheel = folder / "demo-1.0-py3-none-any.whl"
    data = bytes(range(256)) * 400
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  {wheel.name}\n")
    if parts:
        size = -(-len(data) // parts)
        for n in range(parts):
            (folder / f"{wheel.name}.part.{n:02d}").write_bytes(data[n * size : (n + 1) * size])
    else:
        wheel.write_bytes(data)
    return wheel


@pytest.mark.parametrize("damage", ["flipped byte", "lost part", "unlisted wheel", "no sums"])
def test_install_refuses_a_folder_it_cannot_trust_before_installing(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "wheels"
    wheel = wheel_folder(folder, parts=3)
    if damage == "flipped byte":
        part = folder / f"{wheel.name}.part.01"
        raw = bytearray(part.read_bytes())
        raw[7] ^= 1
        part.write_bytes(bytes(raw))
    elif damage == "lost part":
        (folder / f"{wheel.name}.part.02").unlink()
    elif damage == "unlisted wheel":
        (folder / "extra-1.0-py3-none-any.whl").write_bytes(b"not in the sums")
    else:
        (folder / "SHA256SUMS").unlink()
    venv = tmp_path / "venv"
    refused = run("install", str(folder), "--venv", str(venv))
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("offline-gpu-install: "), refused.stderr
    expected = {
        "flipped byte": "missing or damaged",
        "lost part": "missing or damaged",
        "unlisted wheel": "does not list: extra-1.0-py3-none-any.whl",
        "no sums": "SHA256SUMS missing",
    }[damage]
    assert expected in message
    assert not venv.exists(), "nothing may be installed from a folder that failed its check"


def test_download_refuses_bad_options_before_fetching(tmp_path: Path) -> None:
    for args, expected in (
        (("--python", "3"), "give X.Y"),
        (("--arch", "i386"), "x86_64 or aarch64"),
        (("--part-mb", "0"), "a whole number of MiB"),
    ):
        refused = run("download", str(tmp_path / "out"), *args)
        assert refused.returncode == 2
        assert expected in refused.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = run("download", str(busy))
    assert refused.returncode == 2
    assert "not empty" in refused.stderr
    assert (busy / "notes.txt").exists()


def test_usage_names_both_steps() -> None:
    shown = run()
    assert shown.returncode == 2
    assert "download DIR" in shown.stderr
    assert "install DIR" in shown.stderr
    assert "set -euo" not in shown.stderr
