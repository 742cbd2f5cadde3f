"""The torch reference as a backend of the shared generation loop: the oracle the ONNX runtime must equal."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bcaudio.export.audio_head import DepthKV
from bcaudio.export.audio_tokenizer import AudioTokenizer
from bcaudio.export.flow_reference import flow_mel
from bcaudio.export.reference import Reference
from bcaudio.runtime.generation.audio_chunks import chunk_audio, token_frames
from bcaudio.runtime.generation.noise import NoiseSource
from bcaudio.runtime.generation.source_phase import SourcePhase
from bcaudio.runtime.generation.speech_loop import ChooseCode


@torch.no_grad()
def tokenize_chunks(ref: Reference, audio: np.ndarray) -> np.ndarray:
    """16 kHz audio -> (frames, K) codes, 30 s chunks tokenized on their own (spec §1); (0, K) for none."""
    tokenizer = AudioTokenizer(ref.cfg, ref.encoder, ref.bridge).eval()
    parts = [tokenizer(torch.from_numpy(chunk)[None])[0].numpy()
             for chunk in chunk_audio(audio, ref.cfg.frontend) if token_frames(len(chunk), ref.cfg) > 0]
    return np.concatenate(parts) if parts else np.zeros((0, ref.cfg.bridge.num_codebooks), np.int64)


class TorchBackend:
    def __init__(self, ref: Reference, seed: int = 0, flow_steps: int | None = None) -> None:
        self.ref, self.cfg = ref, ref.cfg
        self.reset()
        self.noise = NoiseSource(ref.cfg, seed)
        self.flow_steps = flow_steps or ref.cfg.flow.diffusion_steps

    def reset(self) -> None:
        self.cache = self.ref.llm.empty_cache(1)
        self.position = 0

    def truncate(self, position: int) -> None:
        self.cache = [(k[:, :, :position], v[:, :, :position]) for k, v in self.cache]
        self.position = position

    def tokenize(self, audio16k: np.ndarray) -> np.ndarray:
        return tokenize_chunks(self.ref, audio16k)

    @torch.no_grad()
    def feed(self, ids: Sequence[int], codes: np.ndarray | None = None, logits: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray]:
        """As the runtime's backends: the logits are computed always (the reference has no graph to cut) but given
        only when asked for, so the loop's reads are checked on the oracle too."""
        n = len(ids)
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
        k = self.cfg.bridge.num_codebooks
        codes_t = torch.zeros(1, n, k, dtype=torch.long) if codes is None else torch.as_tensor(codes)[None]
        pos = torch.arange(self.position, self.position + n)[None]
        last, hidden, self.cache = self.ref.llm(ids_t, codes_t, pos, self.cache)
        self.position += n
        return (last[0].numpy() if logits else None), hidden[0, -1].numpy()

    @torch.no_grad()
    def audio_frame(self, hidden: np.ndarray, choose: ChooseCode) -> list[int]:
        tables = self.ref.llm.model.audio_embed_layers
        x = torch.as_tensor(hidden)[None]
        running = torch.zeros_like(x)
        cache: DepthKV | None = None
        codes = []
        for i in range(self.cfg.bridge.num_codebooks):
            logits, cache = self.ref.audio_head.step(x, i, cache)
            code = choose(i, logits[0].numpy())
            codes.append(code)
            running = running + tables[i](torch.tensor([code]))
            x = running
        return codes

    @torch.no_grad()
    def decode_segment(self, codes: np.ndarray, segment: int, first_code: int = 0,
                       phase: SourcePhase | None = None, flow_steps: int | None = None) -> np.ndarray:
        states = self.ref.detokenizer(torch.as_tensor(codes)[None], self.ref.bridge)
        z, source = self.noise.window(segment, first_code, len(codes))
        mel = flow_mel(self.ref.prenet, self.ref.estimator, states, torch.as_tensor(z),
                       flow_steps or self.flow_steps, self.cfg.flow.cfg_rate)
        first_frame = first_code * self.cfg.bridge.avg_pooler
        track = phase or SourcePhase(self.cfg.vocoder.nb_harmonics + 1)
        start = {k: torch.as_tensor(v) for k, v in track.feeds(first_frame).items()}
        wave, frame_phase = self.ref.vocoder(mel, torch.as_tensor(source), torch.as_tensor(self.noise.phases(segment)),
                                             start["start_phase"], start["start_frame"])
        track.record(first_frame, frame_phase[0].numpy())
        return wave[0].numpy()
