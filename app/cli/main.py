"""The ``voxgate`` command: its parser, made of each command family's own (``app.cli.<family>``), and the
dispatch to the family's ``run``. The families import their implementations lazily, so building the parser
imports no model code and ``voxgate serve`` never imports torch."""

from __future__ import annotations

import argparse
import sys

from app.cli import (
    accuracy,
    audit,
    embed,
    export,
    keys,
    lockout,
    reencrypt,
    selfcheck,
    serve,
    speakers,
    tenants,
)

# In the order ``voxgate --help`` lists them.
FAMILIES = (serve, export, embed, selfcheck, keys, audit, lockout, speakers, tenants, reencrypt, accuracy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Speaker verification service.")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parsed = build_parser().parse_args(argv)
    return int(parsed.run(parsed))


if __name__ == "__main__":
    sys.exit(main())
