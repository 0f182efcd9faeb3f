"""From recordings to embeddings under load: admission (memory, expected wait, deadlines), the decode
intake, segmenting, the dynamic batcher, the ONNX Runtime backend, the model bundle's manifest and the
start-up self-check."""
