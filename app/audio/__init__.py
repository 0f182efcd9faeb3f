"""From uploaded bytes to a ``Recording``: container sniffing, decoding, resampling to 16 kHz mono, and
speech detection (Silero VAD). The one way audio enters the service and its command-line tools."""
