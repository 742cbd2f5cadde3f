"""Torch reference model of every Baichuan-Audio part, checkpoint I/O, ONNX export and parity checks."""
