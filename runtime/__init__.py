"""ONNX Runtime sessions, generation, streaming and audio I/O. Never imports torch."""
