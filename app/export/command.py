"""``voxgate export``: dispatch to the exporter for each source kind (torch needed from here on)."""

from __future__ import annotations

import argparse
import sys


def run_export(args: argparse.Namespace) -> int:
    if args.arch and not args.random_init:
        print("voxgate export: --arch needs --random-init (no weights otherwise)", file=sys.stderr)
        return 2
    if args.random_init and not args.arch:
        print("voxgate export: --random-init needs --arch", file=sys.stderr)
        return 2
    if args.resemblyzer:
        from app.export.resemblyzer_export import export_resemblyzer

        export_resemblyzer(args.resemblyzer, args.out, precision=args.precision, name=args.name)
    elif args.nemo:
        from app.export.nemo_export import export_nemo_checkpoint

        export_nemo_checkpoint(args.nemo, args.out, precision=args.precision, name=args.name)
    elif args.pretrained:
        from app.export.pretrained import export_pretrained

        export_pretrained(args.pretrained, args.out, precision=args.precision, cache_dir=args.cache_dir)
    else:
        from app.export.nemo_export import export_random_init

        export_random_init(args.arch, args.out, precision=args.precision, name=args.name)
    print(f"wrote {args.out}/model.onnx and {args.out}/manifest.json")
    return 0
