"""Model configuration, torch-free: the runtime reads the same config from a package's manifest.

base (errors, dict loading), architecture (the parts' shapes), tokens, generation, official (config.json), model
(the whole). Importers use ``bcaudio.config`` for the public names.
"""

from bcaudio.config.architecture import (
    AudioHeadConfig,
    BridgeConfig,
    DetokenizerConfig,
    EncoderConfig,
    FlowConfig,
    FrontendConfig,
    LLMConfig,
    VocoderConfig,
)
from bcaudio.config.base import ConfigError, from_plain
from bcaudio.config.generation import GenerationConfig, SamplingParams, StreamSettings
from bcaudio.config.model import ModelConfig
from bcaudio.config.tokens import SpecialTokens

__all__ = [
    "AudioHeadConfig", "BridgeConfig", "ConfigError", "DetokenizerConfig", "EncoderConfig", "FlowConfig",
    "FrontendConfig", "GenerationConfig", "LLMConfig", "ModelConfig", "SamplingParams", "SpecialTokens",
    "StreamSettings", "VocoderConfig", "from_plain",
]
