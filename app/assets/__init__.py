"""Data files shipped inside the package: ``probe/`` (the self-check probe audio, see app.export.probe) and
``vad/`` (the Silero VAD graph, see app.audio.vad), each with its licence and provenance."""
