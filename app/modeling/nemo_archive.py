"""Reading NeMo checkpoints (``.nemo``) and NeMo YAML configs without NeMo or omegaconf.

A ``.nemo`` file is a tar archive (uncompressed since NeMo 1.x, gzip in some old ones) holding
``model_config.yaml`` (the ``model:`` section of the training config) and ``model_weights.ckpt`` (a flat
``torch.save`` state_dict). Configs may contain OmegaConf interpolations (``${model.sample_rate}``), which
are resolved here with PyYAML plus a small resolver.
"""

from __future__ import annotations

import copy
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
import yaml

from app.core.paths import sha256_file

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"

_FULL_REF = re.compile(r"^\$\{([^${}]+)\}$")
_ANY_REF = re.compile(r"\$\{([^${}]+)\}")


class NemoArchiveError(ValueError):
    """The file is not a usable NeMo checkpoint or config."""


@dataclass(frozen=True)
class NemoArchive:
    path: Path
    config: dict[str, Any]  # the resolved ``model`` section
    state_dict: dict[str, torch.Tensor]
    sha256: str


def _lookup(root: Mapping[str, Any], dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


def _resolve_ref(root: Mapping[str, Any], ref: str, stack: tuple[str, ...]) -> Any:
    ref = ref.strip()
    if ref in stack:
        raise NemoArchiveError(f"circular interpolation: {' -> '.join((*stack, ref))}")
    if ":" in ref:
        raise NemoArchiveError(f"unsupported OmegaConf resolver in ${{{ref}}}")
    candidates = [ref]
    # A config saved inside a .nemo is the ``model`` section of the training config, but its
    # interpolations may still be written from the training config's root (``${model.x}``).
    if ref.startswith("model.") and "model" not in root:
        candidates.append(ref[len("model.") :])
    for candidate in candidates:
        try:
            value = _lookup(root, candidate)
        except KeyError:
            continue
        return _resolve_node(root, value, (*stack, ref))
    raise NemoArchiveError(f"unresolvable interpolation ${{{ref}}}")


def _resolve_node(root: Mapping[str, Any], node: Any, stack: tuple[str, ...]) -> Any:
    if isinstance(node, Mapping):
        return {key: _resolve_node(root, value, stack) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_node(root, value, stack) for value in node]
    if isinstance(node, str) and "${" in node:
        whole = _FULL_REF.match(node)
        if whole:  # a lone reference keeps the referenced value's type (int, list, ...)
            return _resolve_ref(root, whole.group(1), stack)
        return _ANY_REF.sub(lambda m: str(_resolve_ref(root, m.group(1), stack)), node)
    return node


def resolve_interpolations(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with every ``${a.b.c}`` replaced by the value it points to."""
    resolved = _resolve_node(config, copy.deepcopy(dict(config)), ())
    assert isinstance(resolved, dict)
    return resolved


def parse_config_text(text: str) -> dict[str, Any]:
    """Parse a NeMo YAML config and return its resolved ``model`` section.

    Accepts both a full training config (with a top-level ``model:`` key, as in NeMo's
    ``examples/.../conf/*.yaml``) and the bare model section stored in a ``.nemo``.
    """
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise NemoArchiveError("config is not a YAML mapping")
    resolved = resolve_interpolations(loaded)
    model = resolved.get("model", resolved)
    if not isinstance(model, dict) or "encoder" not in model or "decoder" not in model:
        raise NemoArchiveError("config has no model.encoder / model.decoder section")
    return model


def load_config(path: Path) -> dict[str, Any]:
    return parse_config_text(path.read_text())


def _find_member(tar: tarfile.TarFile, basename: str, path: Path) -> tarfile.TarInfo:
    for member in tar.getmembers():
        if member.isfile() and Path(member.name).name == basename:
            return member
    raise NemoArchiveError(f"{path}: no {basename} in the archive")


def load_nemo_archive(path: Path) -> NemoArchive:
    """Read config and weights from a ``.nemo`` file (nothing is extracted to disk)."""
    if not path.is_file():
        raise NemoArchiveError(f"{path}: no such file")
    try:
        with tarfile.open(path, mode="r:*") as tar:
            config_member = _find_member(tar, CONFIG_MEMBER, path)
            weights_member = _find_member(tar, WEIGHTS_MEMBER, path)
            config_file = tar.extractfile(config_member)
            weights_file = tar.extractfile(weights_member)
            if config_file is None or weights_file is None:
                raise NemoArchiveError(f"{path}: unreadable archive member")
            config_text = config_file.read().decode("utf-8")
            weights_bytes = weights_file.read()
    except tarfile.TarError as exc:
        raise NemoArchiveError(f"{path}: not a .nemo (tar) archive: {exc}") from exc
    config = parse_config_text(config_text)
    try:
        state = torch.load(BytesIO(weights_bytes), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt pickle
        raise NemoArchiveError(f"{path}: cannot read {WEIGHTS_MEMBER}: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a Lightning checkpoint rather than a bare state_dict
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NemoArchiveError(f"{path}: {WEIGHTS_MEMBER} is not a state_dict of tensors")
    return NemoArchive(path=path, config=config, state_dict=dict(state), sha256=sha256_file(path))
