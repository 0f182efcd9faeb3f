"""``voxgate selfcheck [--model DIR] [--providers LIST] [--json]``: the start-up self-check, alone.

Loads the bundle as the service would (same settings, same execution providers), embeds its probe and
prints one line (or, with ``--json``, one JSON object) on stdout. Exit status 0 when the graph reproduced
its probe's reference embeddings on this host, 1 otherwise: the check failed, the probe is missing or
damaged, the bundle cannot be loaded, or it has no probe (nothing could be checked); 2 for invalid
settings (as ``voxgate serve``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.selfcheck import SelfCheckResult


def add_parser(sub: Any) -> None:
    selfcheck = sub.add_parser(
        "selfcheck",
        help="check that this host computes what the model's graph computed at export (exit 0/1)",
        description="Embed the bundle's probe on the execution provider the service would use and compare "
        "with the probe's reference embeddings, as `voxgate serve` does before it becomes ready.",
    )
    selfcheck.set_defaults(run=run)
    selfcheck.add_argument("--model", type=Path, help="model directory (default: models/default)")
    selfcheck.add_argument(
        "--providers",
        metavar="LIST",
        help='execution providers as VOXGATE_PROVIDERS takes them ("cuda,cpu", "auto", ...); '
        "default: the settings",
    )
    selfcheck.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _check(model_dir: Path | None, providers: str | None) -> SelfCheckResult:
    from app.core.logs import configure_logging
    from app.core.settings_errors import load_settings
    from app.engine.backend import OnnxBackend
    from app.engine.config import EngineConfig
    from app.engine.selfcheck import SelfCheckFailed, run_selfcheck

    overrides: dict[str, object] = {} if providers is None else {"providers": providers}
    settings = load_settings(**overrides)
    configure_logging(settings)  # logs on stderr; stdout carries only the result
    config = EngineConfig.from_settings(settings, model_dir)
    backend = OnnxBackend.from_config(config)
    try:
        return run_selfcheck(backend, backend.manifest, config.model_dir)
    except SelfCheckFailed as exc:
        return exc.result


def run(args: argparse.Namespace) -> int:
    from app.core.settings_errors import InvalidSettings
    from app.engine.backend import ProviderUnavailable
    from app.engine.manifest import ManifestError

    try:
        result = _check(args.model, args.providers)
    except InvalidSettings as exc:
        print(f"voxgate selfcheck: invalid settings\n{exc}", file=sys.stderr)
        return 2
    except (ManifestError, ProviderUnavailable) as exc:
        print(f"voxgate selfcheck: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_dict()) if args.json else result.line(), flush=True)
    return 0 if result.passed else 1
