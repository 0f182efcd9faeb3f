"""VoxGate: speaker verification and identification service."""

__version__ = "0.1.0"
