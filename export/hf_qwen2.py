"""The text-only part of the LLM as a ``transformers`` Qwen2 model: the test oracle and the benchmarks' baselines.

Baichuan-Audio's LLM is Qwen2 with a fused ``W_pack`` (q, k, v rows in that order, with bias) and
audio embedding tables. Splitting ``W_pack`` into ``q_proj`` / ``k_proj`` / ``v_proj`` and leaving the
audio tables out gives a state dict that ``Qwen2ForCausalLM`` loads as is, so an independent
implementation (and every tool built on it, such as optimum's ONNX exporter) runs the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from bcaudio.config import LLMConfig

if TYPE_CHECKING:
    from transformers import Qwen2Config, Qwen2ForCausalLM

AUDIO_TABLES = "audio_embed_layers"


def qwen2_config(c: LLMConfig) -> Qwen2Config:
    """The Qwen2 config of ``c`` (untied lm_head, eager attention: the reference semantics)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
        head_dim=c.head_dim, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=False, attn_implementation="eager",
        dtype=torch.float32)


def qwen2_state_dict(c: LLMConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``BaichuanLLM`` state dict -> Qwen2 keys: ``W_pack`` split into q/k/v (weights and biases), audio tables
    dropped (Qwen2 has no audio positions)."""
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    out = {}
    for name, tensor in state.items():
        if AUDIO_TABLES in name:
            continue
        if "W_pack." in name:
            base, kind = name.rsplit("W_pack.", 1)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q, kv, kv]), strict=True):
                out[f"{base}{proj}.{kind}"] = part.contiguous()
        else:
            out[name] = tensor
    return out


def to_qwen2(c: LLMConfig, state: Mapping[str, torch.Tensor]) -> Qwen2ForCausalLM:
    """A ``Qwen2ForCausalLM`` (eval, fp32) holding the text part of a ``BaichuanLLM`` state dict; strict, so a
    mapping mistake fails here rather than as a silently random weight."""
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(qwen2_config(c))
    sd = qwen2_state_dict(c, state)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise ValueError(f"Qwen2 conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)  # computed buffers: not on meta
    return model.eval()
