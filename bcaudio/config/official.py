"""The official ``config.json`` format (spec §15), read and written.

Sizes the published code derives are derived the same way: the flow pre-net's hidden width from
``prenet_d_model`` here, the HiFT widths from its state dict (:func:`vocoder_widths`). The few fields of
bcaudio's reduced presets that the official format has no key for (shifted token ids, the log-mel band edges,
the audio head's head size) travel in an extra ``"bcaudio"`` section; a real checkpoint has none and keeps
the published values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bcaudio.config.architecture import VocoderConfig
from bcaudio.config.base import check

if TYPE_CHECKING:
    from bcaudio.config.model import ModelConfig

# The published flow pre-net's in_mlp hidden width is 4 x prenet_d_model (spec §17); config.json has no key for it.
PRENET_HIDDEN_PER_D_MODEL = 4

_OFFICIAL_TOKEN_KEYS = {
    "audio_start_token_id": "audio_start",
    "audio_end_token_id": "audio_end",
    "audio_pad_token_id": "audio_pad",
    "audio_delim_token_id": "audio_delim",
    "audiotext_start_token_id": "audiotext_start",
    "audiotext_end_token_id": "audiotext_end",
    "audiotext_pad_token_id": "audiotext_pad",
    "audiogen_start_token_id": "audiogen_start",
    "audiogen_end_token_id": "audiogen_end",
}



def vocoder_widths(cfg: VocoderConfig, shapes: dict[str, tuple[int, ...]]) -> VocoderConfig:
    """``cfg`` with the channel widths HiFT's state dict holds: conv_pre's and the F0 predictor's first conv's
    output channels (the rest of HiFT's settings are fixed in its constructor)."""
    for key, field_name in (("conv_pre.weight_v", "base_channels"), ("f0_predictor.condnet.0.weight_v", "f0_channels")):
        if key in shapes:
            setattr(cfg, field_name, int(shapes[key][0]))
    return cfg


def to_official(cfg: ModelConfig) -> dict[str, Any]:
    """The checkpoint's config.json: official keys, plus a ``bcaudio`` section for the rest."""
    e, b, llm, d, f = cfg.encoder, cfg.bridge, cfg.llm, cfg.detokenizer, cfg.flow
    tok = cfg.tokens
    audio_config: dict[str, Any] = {
        "sampling_rate": cfg.frontend.sampling_rate,
        "n_fft": cfg.frontend.n_fft,
        "hop_length": cfg.frontend.hop_length,
        "num_mel_bins": cfg.frontend.num_mel_bins,
        "max_audio_seconds": cfg.frontend.max_audio_seconds,
        "split_overlap": 0.0,
        "d_model": e.d_model,
        "encoder_layers": e.layers,
        "encoder_attention_heads": e.heads,
        "encoder_ffn_dim": e.ffn_dim,
        "kernel_size": e.kernel_size,
        "stride_size": e.stride,
        "max_source_positions": e.max_source_positions,
        "activation_function": "gelu",
        "avg_pooler": b.avg_pooler,
        "vq_config": {"enable": True, "codebook_sizes": list(b.codebook_sizes)},
        "decoder_layers": d.layers,
        "decoder_attention_heads": d.heads,
        "decoder_ffn_dim": d.ffn_dim,
        "decoder_kernel_size": d.kernel_size,
        "audio_head_transformer_layers": cfg.audio_head.layers,
    }
    for key, name in _OFFICIAL_TOKEN_KEYS.items():
        if getattr(tok, name) is not None:
            audio_config[key] = getattr(tok, name)
    return {
        "architectures": ["OmniForCausalLM"],
        "model_type": "omni",
        "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.layers,
        "num_attention_heads": llm.heads,
        "num_key_value_heads": llm.kv_heads,
        "head_dim": llm.head_dim,
        "attention_qkv_pack": True,
        "attention_qkv_bias": True,
        "use_norm_head": False,
        "hidden_act": "silu",
        "max_position_embeddings": llm.max_position_embeddings,
        "position_embedding_type": "rope",
        "rope_theta": llm.rope_theta,
        "rms_norm_eps": llm.rms_norm_eps,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "audio_config": audio_config,
        "visual_config": {"enable": False},
        "video_config": {"enable": False},
        "flow_matching_config": {
            "use_hidden_states_before_dconv2": True,
            "prenet_in_dim": f.prenet_in_dim,
            "prenet_out_dim": f.mel_bins,
            "prenet_d_model": f.prenet_d_model,
            "prenet_attention_heads": f.prenet_heads,
            "prenet_ffn_dim": f.prenet_ffn_dim,
            "prenet_nlayers": f.prenet_layers,
            "prenet_activation_function": "gelu",
            "prenet_max_source_positions": 5000,
            "in_channels": f.mel_bins,
            "spk_emb_dim": 0,
            "channels": list(f.channels),
            "attention_head_dim": f.attention_head_dim,
            "num_heads": f.num_heads,
            "n_blocks": f.n_blocks,
            "num_mid_blocks": f.num_mid_blocks,
            "act_fn": "gelu",
            "diffusion_steps": f.diffusion_steps,
            "cfm_params": {"t_scheduler": "cosine", "inference_cfg_rate": f.cfg_rate,
                           "solver": "euler", "sigma_min": 1e-6},
        },
        "bcaudio": {
            "preset": cfg.preset,
            "frontend": {"fmin": cfg.frontend.fmin, "fmax": cfg.frontend.fmax},
            "eos_token_id": tok.eos,
            "special_tokens": {k: getattr(tok, k) for k in ("system", "user", "assistant")},
            "audio_head": {"head_dim": cfg.audio_head.head_dim},
            "detokenizer": {"max_positions": d.max_positions},
            "flow": {"static_chunk_size": f.static_chunk_size},
        },
    }


def from_official(raw: dict[str, Any], cfg: ModelConfig) -> ModelConfig:
    """``cfg`` (a default config) with every field that ``raw``, an official config.json, sets."""
    ac = raw.get("audio_config", {})
    fc = raw.get("flow_matching_config", {})
    extra = raw.get("bcaudio", {})
    cfg.preset = extra.get("preset", "custom")
    fe = cfg.frontend
    for key in ("sampling_rate", "n_fft", "hop_length", "num_mel_bins", "max_audio_seconds"):
        setattr(fe, key, ac.get(key, getattr(fe, key)))
    fe.fmin = extra.get("frontend", {}).get("fmin", fe.fmin)
    fe.fmax = extra.get("frontend", {}).get("fmax", fe.fmax)
    e = cfg.encoder
    e.d_model = ac.get("d_model", e.d_model)
    e.layers = ac.get("encoder_layers", e.layers)
    e.heads = ac.get("encoder_attention_heads", e.heads)
    e.ffn_dim = ac.get("encoder_ffn_dim", e.ffn_dim)
    e.kernel_size = ac.get("kernel_size", e.kernel_size)
    e.stride = ac.get("stride_size", e.stride)
    e.max_source_positions = ac.get("max_source_positions", e.max_source_positions)
    cfg.bridge.avg_pooler = ac.get("avg_pooler", cfg.bridge.avg_pooler)
    cfg.bridge.codebook_sizes = list(ac.get("vq_config", {}).get("codebook_sizes", cfg.bridge.codebook_sizes))
    llm = cfg.llm
    llm.vocab_size = raw.get("vocab_size", llm.vocab_size)
    llm.hidden_size = raw.get("hidden_size", llm.hidden_size)
    llm.intermediate_size = raw.get("intermediate_size", llm.intermediate_size)
    llm.layers = raw.get("num_hidden_layers", llm.layers)
    llm.heads = raw.get("num_attention_heads", llm.heads)
    llm.kv_heads = raw.get("num_key_value_heads", llm.kv_heads)
    llm.head_dim = raw.get("head_dim", llm.hidden_size // llm.heads)
    llm.rope_theta = float(raw.get("rope_theta", llm.rope_theta))
    llm.rms_norm_eps = float(raw.get("rms_norm_eps", llm.rms_norm_eps))
    llm.max_position_embeddings = raw.get("max_position_embeddings", llm.max_position_embeddings)
    check(raw.get("attention_qkv_pack", True), "config.json: only the fused W_pack attention layout is supported")
    cfg.audio_head.layers = ac.get("audio_head_transformer_layers", cfg.audio_head.layers)
    cfg.audio_head.head_dim = extra.get("audio_head", {}).get("head_dim", cfg.audio_head.head_dim)
    d = cfg.detokenizer
    d.layers = ac.get("decoder_layers", d.layers)
    d.heads = ac.get("decoder_attention_heads", d.heads)
    d.ffn_dim = ac.get("decoder_ffn_dim", d.ffn_dim)
    d.kernel_size = ac.get("decoder_kernel_size", d.kernel_size)
    d.max_positions = extra.get("detokenizer", {}).get("max_positions", d.max_positions)
    f = cfg.flow
    f.prenet_in_dim = fc.get("prenet_in_dim", f.prenet_in_dim)
    f.mel_bins = fc.get("prenet_out_dim", f.mel_bins)
    f.prenet_d_model = fc.get("prenet_d_model", f.prenet_d_model)
    f.prenet_heads = fc.get("prenet_attention_heads", f.prenet_heads)
    f.prenet_ffn_dim = fc.get("prenet_ffn_dim", f.prenet_ffn_dim)
    f.prenet_layers = fc.get("prenet_nlayers", f.prenet_layers)
    f.channels = list(fc.get("channels", f.channels))
    f.attention_head_dim = fc.get("attention_head_dim", f.attention_head_dim)
    f.num_heads = fc.get("num_heads", f.num_heads)
    f.n_blocks = fc.get("n_blocks", f.n_blocks)
    f.num_mid_blocks = fc.get("num_mid_blocks", f.num_mid_blocks)
    f.diffusion_steps = fc.get("diffusion_steps", f.diffusion_steps)
    f.cfg_rate = float(fc.get("cfm_params", {}).get("inference_cfg_rate", f.cfg_rate))
    f.prenet_hidden_dim = PRENET_HIDDEN_PER_D_MODEL * f.prenet_d_model  # as the published pre-net derives it
    f.static_chunk_size = extra.get("flow", {}).get("static_chunk_size", f.static_chunk_size)
    tok = cfg.tokens
    for key, name in _OFFICIAL_TOKEN_KEYS.items():
        if key in ac:
            setattr(tok, name, ac[key])
    tok.eos = extra.get("eos_token_id", tok.eos)
    for name, value in extra.get("special_tokens", {}).items():
        setattr(tok, name, value)
    return cfg
