"""The Dockerfile / Compose / Kustomize helpers of the deploy and README tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import DEPLOY, REPO_ROOT


# --- shipping artefacts: Dockerfile, Compose, Kustomize --------------------------------------------------
def tool(name: str) -> str:
    """A command-line tool of the venv (dev extra) or PATH; the test is skipped without it."""
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (`make test` installs it with the dev extra)")
    return found


def clean_env() -> dict[str, str]:
    # Compose interpolates ${VAR} from the environment: test the files' own defaults, not this shell's.
    keep = ("PATH", "HOME", "TMPDIR", "LANG")
    return {k: v for k, v in os.environ.items() if k in keep}


def compose(
    files: tuple[str, ...], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [tool("docker-compose")]
    for f in files:
        cmd += ["-f", f]
    return subprocess.run(
        [*cmd, *args],
        cwd=REPO_ROOT,
        env={**clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def compose_config(
    files: tuple[str, ...], profile: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    args = ["--profile", profile] if profile else []
    result = compose(files, *args, "config", "--format", "json", env=env)
    assert result.returncode == 0, f"docker-compose config failed for {files}:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuations joined and comments dropped, grouped by stage."""
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {line!r}"
            key, _, value = rest.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(global_args, stages)


# The Kustomize overlays (a listing of the repository's own deploy/ tree, not test data).
OVERLAYS = sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
