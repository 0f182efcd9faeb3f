"""Data files shipped inside the package (``probe/``: the self-check probe audio, see app.export.probe)."""
