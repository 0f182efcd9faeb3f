"""Argument types of the ``voxgate`` commands: a value that cannot mean anything is refused by the
parser, in one line, before any work starts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from app.core.paths import unwritable


def rate(text: str) -> float:
    """A false-accept rate: a fraction strictly between 0 and 1 (0.01 = 1 %)."""
    value = number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate strictly between 0 and 1 (0.01 = 1 %)")
    return value


def seconds(text: str) -> float:
    value = number(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration >= 0 s")
    return value


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def writable_file(text: str) -> Path:
    """An output file that can be written, checked before minutes of embedding."""
    if (why := unwritable(Path(text))) is not None:
        raise argparse.ArgumentTypeError(why)
    return Path(text)
