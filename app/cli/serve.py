"""``voxgate serve``: the HTTP service (``app.server.serve``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.set_defaults(run=run)
    serve.add_argument("--host", help="bind address (default: settings, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: settings, 8000)")
    serve.add_argument("--model", type=Path, help="model directory (default: models/default)")


def run(args: argparse.Namespace) -> int:
    from app.core.settings_errors import settings_or_report

    if settings_or_report("voxgate") is None:  # fail fast, before anything starts
        return 2
    from app.server.serve import serve

    return serve(host=args.host, port=args.port, model_dir=args.model)
