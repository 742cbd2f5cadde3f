"""Quantization recipes and accuracy reports."""
