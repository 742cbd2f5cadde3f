"""A model package on ONNX Runtime: its manifest, sessions, text tokenizer, LLM cache and device profiles."""
