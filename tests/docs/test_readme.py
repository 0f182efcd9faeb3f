"""Every shell command in README.md is exercised here, and the README's generated parts are current.

Commands are taken from the fenced ``sh`` blocks. Each must match one rule below; a command no rule
covers fails `test_every_readme_command_is_covered`, so a new README command needs a check.

- ``make run`` / ``make test``: ``make -n`` shows they set up first and then serve / run pytest (CI runs
  ``make test`` itself through .ci/run).
- ``voxgate ...``: parsed by the real CLI parser (flags and choices exist); ``embed`` is run for real.
- ``python -m app.core.settings_doc``: the README table equals what it generates.
- ``curl ...``: run against a live ``voxgate serve`` (CPU, a private Redis), answers compared with the
  JSON shown under the command.
- ``docker compose ...``: the same files through ``docker-compose config``.
- ``docker build ...``: every ``--build-arg`` is an ARG of the Dockerfile; CUDA/ORT pairs agree.
- ``kubectl apply -k DIR``: DIR is an overlay rendered and validated by tests/deploy/test_deploy.py.
- ``pip install ./clients/python``: the Python client, which ``make test`` installs from there (its
  ``python`` example is run against a live service by tests/api/test_python_client.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from app.cli.export import PRETRAINED_NAMES
from app.cli.main import build_parser
from app.core.settings_doc import allowed_env_names, extract_table, render_table
from tests.support.deploy import OVERLAYS, compose_config, parse_dockerfile
from tests.support.redis_server import RedisProcess, free_port

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
SHELL_LANGS = {"sh", "bash", "shell"}
README_BASE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Command:
    text: str
    tokens: tuple[str, ...]
    response: str | None  # name of the <!-- response: NAME --> block right after it, if any

    def __str__(self) -> str:
        return self.text


def readme_commands(markdown: str = README) -> list[Command]:
    commands: list[Command] = []
    fence = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[a-z]*)[ \t]*$")
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = fence.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = len(opening.group("indent")), opening.group("lang")
        body: list[str] = []
        i += 1
        while not re.match(r"^[ \t]*```[ \t]*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        i += 1
        if lang not in SHELL_LANGS:
            continue
        following = next((line for line in lines[i:] if line.strip()), "")
        response = re.fullmatch(r"<!-- response: (\S+) -->", following.strip())
        joined = "\n".join(body).replace("\\\n", " ")
        block_commands = [c for c in joined.splitlines() if shlex.split(c, comments=True)]
        for n, text in enumerate(block_commands):
            last = n == len(block_commands) - 1
            commands.append(
                Command(
                    text=text.strip(),
                    tokens=tuple(shlex.split(text, comments=True)),
                    response=response.group(1) if response and last else None,
                )
            )
    return commands


def _split_env(tokens: tuple[str, ...]) -> tuple[dict[str, str], tuple[str, ...]]:
    env: dict[str, str] = {}
    rest = list(tokens)
    while rest and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", rest[0]):
        key, _, value = rest.pop(0).partition("=")
        env[key] = value
    return env, tuple(rest)


def _is_make(c: Command) -> bool:
    return _split_env(c.tokens)[1][:1] == ("make",)


def _is_voxgate(c: Command) -> bool:
    program = _split_env(c.tokens)[1][:1]
    return bool(program) and Path(program[0]).name == "voxgate"


def _is_settings_doc(c: Command) -> bool:
    return c.tokens[1:3] == ("-m", "app.core.settings_doc") and Path(c.tokens[0]).name.startswith("python")


def _is_curl(c: Command) -> bool:
    return c.tokens[:1] == ("curl",)


def _is_compose(c: Command) -> bool:
    return c.tokens[:2] == ("docker", "compose") or c.tokens[:1] == ("docker-compose",)


def _is_docker_build(c: Command) -> bool:
    return c.tokens[:2] == ("docker", "build")


def _is_kubectl_apply(c: Command) -> bool:
    return c.tokens[:3] == ("kubectl", "apply", "-k")


def _is_pip_install(c: Command) -> bool:
    program = c.tokens[:1]
    return bool(program) and Path(program[0]).name.startswith("pip") and c.tokens[1:2] == ("install",)


def _is_bench(c: Command) -> bool:
    # Covered by tests/bench/test_bench_smoke.py, which runs each benchmark at tiny sizes.
    program = c.tokens[:1]
    if not program or not Path(program[0]).name.startswith("python"):
        return False
    return c.tokens[1:3] in (("-m", "bench.bench_engine"),) or c.tokens[1:2] == ("bench/bench_search.py",)


RULES: dict[str, Callable[[Command], bool]] = {
    "make": _is_make,
    "voxgate": _is_voxgate,
    "settings_doc": _is_settings_doc,
    "curl": _is_curl,
    "compose": _is_compose,
    "docker_build": _is_docker_build,
    "kubectl": _is_kubectl_apply,
    "bench": _is_bench,
    "pip": _is_pip_install,
}
COMMANDS = readme_commands()


def _commands(rule: str) -> list[Command]:
    return [c for c in COMMANDS if RULES[rule](c)]


def test_readme_parser_finds_the_setup_commands() -> None:
    first = [c.tokens for c in COMMANDS[:2]]
    assert first == [("make", "run"), ("make", "test")], "the README opens with `make run` and `make test`"
    sample = readme_commands("```sh\nfoo \\\n  --bar  # c\n```\n<!-- response: x -->\n```json\n{}\n```\n")
    assert sample == [Command("foo    --bar  # c", ("foo", "--bar"), "x")]


def test_every_readme_command_is_covered() -> None:
    uncovered = [c.text for c in COMMANDS if not any(rule(c) for rule in RULES.values())]
    assert not uncovered, f"README commands no test covers (add a rule): {uncovered}"
    for rule in RULES:
        assert _commands(rule), f"no README command for rule {rule}: remove the rule or the check is dead"


# --- make ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", _commands("make"), ids=str)
def test_make_command(command: Command) -> None:
    env, tokens = _split_env(command.tokens)
    assert not set(env) - allowed_env_names(), f"not settings: {set(env) - allowed_env_names()}"
    targets = tokens[1:]
    assert set(targets) <= {"run", "test"}
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    dry = subprocess.run(
        [make, "-n", *targets], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert dry.returncode == 0, dry.stderr
    assert "scripts/setup.sh" in dry.stdout, "every README entry point sets up first"
    expected = {"run": "voxgate serve", "test": "-m pytest"}
    for target in targets:
        assert expected[target] in dry.stdout


# --- pip install (the Python client) ---------------------------------------------------------------------


@pytest.mark.parametrize("command", _commands("pip"), ids=str)
def test_pip_install_names_the_client_that_make_test_installs(command: Command) -> None:
    import voxgate_client

    target = (REPO / command.tokens[-1]).resolve()
    assert target == REPO / "clients" / "python", f"`{command}` installs no client of this repository"
    assert (target / "pyproject.toml").is_file()
    # make test installs it (editable) from the same folder: the tests run what the README installs.
    assert Path(voxgate_client.__file__).resolve().is_relative_to(target)


# --- the voxgate command --------------------------------------------------------------------------------


def test_voxgate_entry_point_is_installed() -> None:
    voxgate = Path(sys.executable).parent / "voxgate"
    result = subprocess.run([str(voxgate), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for sub in ("serve", "export", "embed", "selfcheck"):
        assert sub in result.stdout


@pytest.mark.parametrize("command", _commands("voxgate"), ids=str)
def test_voxgate_command_parses(command: Command) -> None:
    env, tokens = _split_env(command.tokens)
    assert not set(env) - allowed_env_names()
    try:
        args = build_parser().parse_args(list(tokens[1:]))
    except SystemExit as exc:  # argparse reports the bad flag on stderr and exits 2
        pytest.fail(f"`{command}` is rejected by the CLI parser (exit {exc.code})")
    assert args.command in {"serve", "export", "embed", "selfcheck", "keys", "eval", "calibrate", "cohort"}


@pytest.mark.parametrize("command", [c for c in _commands("voxgate") if "keys" in c.tokens], ids=str)
def test_voxgate_keys_runs(command: Command, redis_server: RedisProcess) -> None:
    """The README's first-key command, run as written against a real Redis (REDIS_URL, as the service)."""
    _, tokens = _split_env(command.tokens)
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "VOXGATE_REDIS_NAMESPACE": f"readme-{uuid.uuid4().hex[:8]}",
    }
    run = subprocess.run(
        [str(REPO / tokens[0]), *tokens[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("vgk_")


@pytest.mark.parametrize("command", [c for c in _commands("voxgate") if "embed" in c.tokens], ids=str)
def test_voxgate_embed_runs(command: Command) -> None:
    tokens = list(command.tokens)
    tokens[0] = str(Path(sys.executable).parent / "voxgate")
    result = subprocess.run(tokens, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    files = [t for t in command.tokens if t.endswith((".wav", ".flac"))]
    assert files, f"`{command}` embeds no audio file"
    assert len(lines) == len(files)


@pytest.mark.parametrize("command", [c for c in _commands("voxgate") if "selfcheck" in c.tokens], ids=str)
def test_voxgate_selfcheck_runs(command: Command) -> None:
    tokens = list(command.tokens)
    tokens[0] = str(Path(sys.executable).parent / "voxgate")
    result = subprocess.run(tokens, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("self-check passed: model "), result.stdout


# --- generated README parts ---------------------------------------------------------------------------


def test_settings_table_is_current() -> None:
    assert _commands("settings_doc"), "the README tells how to regenerate the table"
    assert extract_table(README) == render_table(), (
        "README settings table is stale: run `python -m app.core.settings_doc --write README.md`"
    )


def test_settings_doc_cli_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.core.settings_doc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_table()


def test_performance_section_is_marked_for_the_lead() -> None:
    assert "<!-- performance:begin" in README
    assert "<!-- performance:end -->" in README


# --- docker / compose / kubectl -----------------------------------------------------------------------


@pytest.mark.parametrize("command", _commands("compose"), ids=str)
def test_compose_command_config_is_valid(command: Command) -> None:
    tokens = list(command.tokens[2:] if command.tokens[0] == "docker" else command.tokens[1:])
    files: list[str] = []
    while tokens and tokens[0] == "-f":
        files.append(tokens[1])
        tokens = tokens[2:]
    assert tokens[:1] in (["up"], ["down"], ["ps"], ["logs"], ["build"])
    config = compose_config(tuple(files) or ("docker-compose.yml",))
    assert {"api", "redis"} <= set(config["services"])


@pytest.mark.parametrize("command", _commands("docker_build"), ids=str)
def test_docker_build_command_uses_real_build_args(command: Command) -> None:
    dockerfile = parse_dockerfile((REPO / "Dockerfile").read_text(encoding="utf-8"))
    declared = set(dockerfile.global_args)
    for stage in dockerfile.stages:
        declared |= {rest.partition("=")[0] for keyword, rest in stage.instructions if keyword == "ARG"}
    tokens = list(command.tokens)
    args = dict(tokens[i + 1].split("=", 1) for i, t in enumerate(tokens) if t == "--build-arg")
    assert not set(args) - declared, f"unknown build args: {set(args) - declared}"
    assert tokens[-1] == "."
    if "PRETRAINED" in args:
        assert args["PRETRAINED"] in PRETRAINED_NAMES
    if "RUNTIME_IMAGE" in args and "ORT_PACKAGE" in args:
        image = re.search(r"nvidia/cuda:(\d+)\.", args["RUNTIME_IMAGE"])
        assert image, args["RUNTIME_IMAGE"]
        cuda_major = int(image.group(1))
        version = Version(args["ORT_PACKAGE"].partition("==")[2])
        assert cuda_major == (12 if version < Version("1.27") else 13)


@pytest.mark.parametrize("command", _commands("kubectl"), ids=str)
def test_kubectl_apply_targets_a_validated_overlay(command: Command) -> None:
    target = (REPO / command.tokens[3]).resolve()
    assert target in [o.resolve() for o in OVERLAYS], (
        "tests/deploy/test_deploy.py renders and validates overlays"
    )


# --- curl against a live server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The server reads VOXGATE_MODEL_DIR like any setting; unset (CI) = the default model of the README.
    model_dir = Path(os.environ.get("VOXGATE_MODEL_DIR", REPO / "models" / "default"))
    if not (model_dir / "model.onnx").is_file():
        pytest.fail(f"{model_dir}/model.onnx is missing: the README examples need the default model")
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "VOXGATE_REDIS_NAMESPACE": f"readme-{uuid.uuid4().hex[:8]}",
        "VOXGATE_PROVIDERS": "cpu",
        "VOXGATE_DATA_DIR": str(tmp_path_factory.mktemp("voxgate-data")),
        "VOXGATE_LOG_LEVEL": "WARNING",
    }
    log_path = tmp_path_factory.mktemp("voxgate-log") / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # model load + warm-up on 2 shared cores
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"voxgate serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"voxgate serve never became ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _shown_response(name: str) -> dict[str, Any]:
    block = re.search(rf"<!-- response: {re.escape(name)} -->\s*```json\n(.*?)\n```", README, re.DOTALL)
    assert block, f"README response block {name} missing"
    shown: dict[str, Any] = json.loads(block.group(1))
    return shown


def _assert_same_answer(shown: Any, actual: Any, where: str) -> None:
    if isinstance(shown, dict):
        assert isinstance(actual, dict), where
        assert set(shown) == set(actual), (
            f"{where}: fields differ: README {sorted(shown)} vs {sorted(actual)}"
        )
        for key in shown:
            _assert_same_answer(shown[key], actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list), where
        assert len(shown) == len(actual), where
        for n, (s, a) in enumerate(zip(shown, actual, strict=True)):
            _assert_same_answer(s, a, f"{where}[{n}]")
    elif isinstance(shown, float) and not isinstance(shown, bool):
        # README shows rounded figures; CPU inference is deterministic to far better than this.
        assert actual == pytest.approx(shown, abs=0.01), f"{where}: README {shown} vs {actual}"
    else:
        assert shown == actual, f"{where}: README {shown!r} vs {actual!r}"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def format_response(answer: dict[str, Any]) -> str:
    """The README's style: one top-level field per line, nested values inline, floats to 3 decimals."""
    fields = [f"  {json.dumps(k)}: {json.dumps(_rounded(v))}" for k, v in answer.items()]
    return "{\n" + ",\n".join(fields) + "\n}"


def _write_responses(answers: dict[str, dict[str, Any]]) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name, answer in answers.items():
        block = re.search(rf"<!-- response: {re.escape(name)} -->\s*```json\n(.*?)\n```", text, re.DOTALL)
        assert block, f"README response block {name} missing"
        text = text[: block.start(1)] + format_response(answer) + text[block.end(1) :]
    (REPO / "README.md").write_text(text, encoding="utf-8")


def test_readme_curl_examples_give_the_answers_shown(live_server: str) -> None:
    """`UPDATE_README_ANSWERS=1 pytest tests/docs/test_readme.py` rewrites the shown answers (new model)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    answers: dict[str, dict[str, Any]] = {}
    for command in _commands("curl"):
        tokens = [t.replace(README_BASE_URL, live_server) for t in command.tokens]
        result = subprocess.run(
            [curl, *tokens[1:]], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert command.response, f"`{command}` must be followed by its <!-- response: NAME --> block"
        answers[command.response] = json.loads(result.stdout)
    if os.environ.get("UPDATE_README_ANSWERS") == "1":
        _write_responses(answers)
        return
    for name, answer in answers.items():
        _assert_same_answer(_shown_response(name), answer, name)


# --- docs/ that restate code constants ------------------------------------------------------------------


def test_scaling_doc_states_the_store_and_sync_constants() -> None:
    from app.core.settings import Settings
    from app.store import redis_store

    doc = (REPO / "docs" / "scaling.md").read_text(encoding="utf-8")
    interval = Settings.model_fields["index_sync_interval_s"].default
    assert f"VOXGATE_INDEX_SYNC_INTERVAL_S` (default {interval} s)" in doc
    assert f"MAXLEN ~ {redis_store.DEFAULT_CHANGES_MAXLEN}" in doc
    assert f"batches of {redis_store._SCAN_BATCH}" in doc
    assert "app/store/sync.py" in doc
