"""bcaudio: edge deployment of Baichuan-Audio speech language models."""

__version__ = "0.1.0"
