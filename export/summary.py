"""A readable summary of a checkpoint folder: what `bcaudio init` and `bcaudio info` print."""

from __future__ import annotations

import math
from pathlib import Path

from bcaudio.export.checkpoint import expected_shapes, load_config
from bcaudio.export.reference import PARTS


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


def parameter_counts(ckpt: Path) -> dict[str, int]:
    cfg = load_config(ckpt)
    return {part: sum(math.prod(s) for s in expected_shapes(cfg, part).values()) for part in PARTS}


def print_summary(ckpt: Path) -> None:
    cfg = load_config(ckpt)
    counts = parameter_counts(ckpt)
    llm, tok = cfg.llm, cfg.tokens
    print(f"checkpoint {ckpt}  (preset {cfg.preset})")
    print(f"  llm: hidden {llm.hidden_size}, {llm.layers} layers, {llm.heads} heads / {llm.kv_heads} kv, "
          f"head_dim {llm.head_dim}, ffn {llm.intermediate_size}, vocab {llm.vocab_size}, theta {llm.rope_theta:g}")
    print(f"  audio: {cfg.frontend.num_mel_bins} mels, encoder d {cfg.encoder.d_model} x {cfg.encoder.layers}, "
          f"RVQ {cfg.bridge.num_codebooks} x {cfg.bridge.codebook_sizes} in {cfg.rvq_dim} dims, "
          f"head {cfg.audio_head.layers} layers, detokenizer {cfg.detokenizer.layers} layers")
    print(f"  flow: prenet {cfg.flow.prenet_layers} x d {cfg.flow.prenet_d_model}, U-Net {cfg.flow.channels} "
          f"({cfg.flow.num_mid_blocks} mid blocks), {cfg.flow.diffusion_steps} steps, cfg {cfg.flow.cfg_rate}; "
          f"vocoder {cfg.vocoder.sampling_rate} Hz, {cfg.vocoder.samples_per_frame} samples/frame")
    print(f"  tokens: eos {tok.eos}, audio pad {tok.audio_pad}, audiogen {tok.audiogen_start}/{tok.audiogen_end}")
    print("  parameters: " + ", ".join(f"{p} {_human(n)}" for p, n in counts.items())
          + f"; total {_human(sum(counts.values()))}")
    files = sorted(p for p in ckpt.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(f"  files: {len(files)}, {_human(total, 'B')} on disk: " + ", ".join(p.name for p in files))
