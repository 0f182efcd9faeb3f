"""The ``voxgate`` command: one module per command family, each owning its parser and its ``run``.
Implementations are imported lazily, so ``voxgate serve`` never imports torch."""
