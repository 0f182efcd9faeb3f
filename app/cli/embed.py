"""``voxgate embed [--model DIR] FILE...``: one JSON line ``{"file": ..., "embedding": [...]}`` per file.

Files are decoded exactly as the service decodes uploads (``app.audio.decode``); the embedding is the
engine's raw output (not L2-normalised), so it can be compared with other tools' outputs. A file
that cannot be used is reported on stderr as a problem (code + detail) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.engine import EmbeddingEngine


def add_parser(sub: Any) -> None:
    embed = sub.add_parser("embed", help="print embeddings of audio files as JSON lines")
    embed.set_defaults(run=run)
    embed.add_argument("--model", type=Path, help="model directory (default: models/default)")
    embed.add_argument("files", nargs="+", type=Path)


async def _embed_files(engine: EmbeddingEngine, files: list[Path], max_seconds: float) -> int:
    from app.audio.decode import decode_audio
    from app.core.errors import VoxGateError

    failures = 0
    for path in files:
        try:
            data = await asyncio.to_thread(path.read_bytes)
            audio = await asyncio.to_thread(decode_audio, data, max_seconds=max_seconds)
            embedding = await engine.embed(audio.waveform)
        except OSError as exc:
            failures += 1
            print(
                json.dumps({"file": str(path), "error": {"code": "unreadable", "detail": str(exc)}}),
                file=sys.stderr,
            )
            continue
        except VoxGateError as exc:
            failures += 1
            print(
                json.dumps({"file": str(path), "error": {"code": exc.code, "detail": exc.detail}}),
                file=sys.stderr,
            )
            continue
        line = {"file": str(path), "embedding": [float(x) for x in embedding.tolist()]}
        print(json.dumps(line), flush=True)
    return failures


async def _run(model_dir: Path, files: list[Path]) -> int:
    from app.core.logs import configure_logging
    from app.core.settings import Settings
    from app.engine.engine import EmbeddingEngine

    settings = Settings.model_validate({})
    configure_logging(settings)  # logs go to stderr; stdout carries only the JSON lines
    engine = EmbeddingEngine.from_settings(settings, model_dir)
    await engine.start()
    try:
        return await _embed_files(engine, files, settings.max_audio_seconds)
    finally:
        await engine.stop()


def run(args: argparse.Namespace) -> int:
    from app.core.paths import DEFAULT_MODEL_DIR

    failures = asyncio.run(_run(args.model or DEFAULT_MODEL_DIR, args.files))
    return 1 if failures else 0
