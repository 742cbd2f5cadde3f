"""Named model shapes: ``tiny`` for tests, ``small`` for benchmarks, ``baichuan-audio-7b`` as published.

``tiny`` keeps the real token scheme but moves the special tokens to the top of
a 1024-entry vocabulary (same order and gaps as the real ids), so a tiny model
exports and runs in seconds while every code path stays the real one.
"""

from __future__ import annotations

from collections.abc import Callable

from bcaudio.config import (
    AudioHeadConfig,
    BridgeConfig,
    ConfigError,
    DetokenizerConfig,
    EncoderConfig,
    FlowConfig,
    GenerationConfig,
    LLMConfig,
    ModelConfig,
    SpecialTokens,
    VocoderConfig,
)

_REAL_EOS = SpecialTokens().eos


def _shift_tokens(base: int) -> SpecialTokens:
    """The real special-token layout moved so that ``<|endoftext|>`` sits at ``base``."""
    real = SpecialTokens()
    shifted = {k: getattr(real, k) - _REAL_EOS + base for k in SpecialTokens.NAMES if getattr(real, k) is not None}
    return SpecialTokens(**shifted)


def bounded_generation(audio_frames: int, text_tokens: int, rounds: int) -> GenerationConfig:
    """Spec §8 sampling with smaller limits: random weights rarely emit code-0 EOS or eos, so an
    unbounded turn would always run to 500 frames x 100 rounds. Real checkpoints keep the spec's limits."""
    gen = GenerationConfig()
    gen.audio.max_new_tokens = audio_frames
    gen.first_text.max_new_tokens = gen.text.max_new_tokens = text_tokens
    gen.text_only.max_new_tokens = gen.asr.max_new_tokens = 2 * text_tokens
    gen.max_rounds = rounds
    return gen


def tiny() -> ModelConfig:
    gen = bounded_generation(audio_frames=12, text_tokens=8, rounds=3)
    return ModelConfig(
        preset="tiny",
        encoder=EncoderConfig(d_model=64, layers=2, heads=4, ffn_dim=128),
        bridge=BridgeConfig(avg_pooler=4, codebook_sizes=[64, 32, 32, 16, 16, 16, 16, 16]),
        llm=LLMConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, layers=2, heads=4, kv_heads=2,
                      head_dim=16, max_position_embeddings=4096),
        audio_head=AudioHeadConfig(layers=3, head_dim=16),
        detokenizer=DetokenizerConfig(layers=2, heads=4, ffn_dim=128),
        flow=FlowConfig(prenet_in_dim=64, prenet_hidden_dim=128, prenet_d_model=32, prenet_heads=2,
                        prenet_ffn_dim=64, prenet_layers=2, channels=[32], attention_head_dim=16, num_heads=2,
                        n_blocks=1, num_mid_blocks=2, diffusion_steps=4),
        vocoder=VocoderConfig(base_channels=32, f0_channels=32),
        tokens=_shift_tokens(960),
        generation=gen,
    ).validate()


def small() -> ModelConfig:
    """Qwen2.5-0.5B-shaped LLM; the audio parts scaled to match (about 1/2.5 of the 7B widths)."""
    return ModelConfig(
        preset="small",
        encoder=EncoderConfig(d_model=512, layers=6, heads=8, ffn_dim=2048),
        bridge=BridgeConfig(),
        llm=LLMConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, layers=24, heads=14, kv_heads=2,
                      head_dim=64, max_position_embeddings=32768),
        audio_head=AudioHeadConfig(layers=3, head_dim=128),
        detokenizer=DetokenizerConfig(layers=4, heads=8, ffn_dim=2048),
        flow=FlowConfig(prenet_in_dim=512, prenet_hidden_dim=1024, prenet_d_model=256, prenet_heads=4,
                        prenet_ffn_dim=1024, prenet_layers=6, channels=[128], attention_head_dim=64, num_heads=2,
                        n_blocks=2, num_mid_blocks=6),
        vocoder=VocoderConfig(),
        generation=bounded_generation(audio_frames=40, text_tokens=16, rounds=3),
    ).validate()


def baichuan_audio_7b() -> ModelConfig:
    cfg = ModelConfig(preset="baichuan-audio-7b")
    return cfg.validate()


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "small": small,
    "baichuan-audio-7b": baichuan_audio_7b,
}


def get_preset(name: str, layers: int | None = None, vocab: int | None = None) -> ModelConfig:
    """A preset by name; ``layers`` cuts every transformer stack to at most that many layers, ``vocab`` the text
    vocabulary to that many entries with the special tokens at its top, as ``tiny`` has them (at the 7B widths
    the vocabulary's two tables are most of a 2-layer model: tests of per-layer cost need not pay for them)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    if layers is not None:
        if layers < 1:
            raise ConfigError("--layers must be >= 1")
        cfg.llm.layers = min(cfg.llm.layers, layers)
        cfg.encoder.layers = min(cfg.encoder.layers, layers)
        cfg.audio_head.layers = min(cfg.audio_head.layers, layers)
        cfg.detokenizer.layers = min(cfg.detokenizer.layers, layers)
        cfg.flow.prenet_layers = min(cfg.flow.prenet_layers, layers)
        cfg.flow.num_mid_blocks = min(cfg.flow.num_mid_blocks, layers)
        cfg.flow.n_blocks = min(cfg.flow.n_blocks, layers)
        cfg.preset = f"{name}/layers={layers}"
    if vocab is not None:
        span = max(getattr(cfg.tokens, k) for k in SpecialTokens.NAMES if getattr(cfg.tokens, k) is not None) \
            - cfg.tokens.eos + 1
        if not span < vocab <= cfg.llm.vocab_size:
            raise ConfigError(f"vocab must be in ({span}, {cfg.llm.vocab_size}] to hold the special tokens")
        base = cfg.tokens.eos - cfg.llm.vocab_size + vocab
        cfg.llm.vocab_size, cfg.tokens = vocab, _shift_tokens(base)
        cfg.preset += f"/vocab={vocab}"
    return cfg.validate()
