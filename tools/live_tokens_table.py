"""How far incremental tokenization (live prefill) is from whole-utterance tokenization: the README's table.

For each prefill chunk and tokenizer left context it tokenizes the recording chunk by chunk as
``bcaudio chat`` does, and reports the share of code frames (all codebooks) and of single codes
equal to whole-utterance tokenization, and whether a greedy answer starts with the same tokens.

    python tools/live_tokens_table.py --model PKG --input speech.wav [--chunks 320,640] [--contexts 0,320]
"""

from __future__ import annotations

import argparse

import numpy as np
import soundfile as sf

from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import collect
from bcaudio.runtime.live.incremental_tokens import tokenize_in_chunks, whole_codes


def greedy_answer(package: str, codes: np.ndarray) -> list[int]:
    """Text ids of a fresh greedy answer to ``codes``."""
    assistant = VoiceAssistant(package, None, log=lambda _: None)
    assistant.loop.gen = assistant.cfg.generation.greedy()
    return collect(assistant.loop.respond(codes), 0).text_ids


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two answers share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model package folder")
    parser.add_argument("--input", required=True, help="a speech recording (any rate; made mono 16 kHz)")
    parser.add_argument("--chunks", default="320,640,960,1280", help="prefill chunks in ms")
    parser.add_argument("--contexts", default="0,320,640", help="tokenizer left contexts in ms")
    args = parser.parse_args()
    assistant = VoiceAssistant(args.model, None, log=lambda _: None)
    audio, rate = sf.read(args.input, dtype="float32", always_2d=True)
    audio = assistant.prepare(audio, rate)
    whole = assistant.tokenize(audio)
    reference = greedy_answer(args.model, whole)
    print(f"{audio.size / 16000:.2f} s, {len(whole)} codes; greedy answer of {len(reference)} text tokens\n")
    print("| chunk ms | left context ms | identical frames | identical codes | first answer token | "
          "answer tokens equal |")
    print("|---|---|---|---|---|---|")
    for chunk_ms in (int(c) for c in args.chunks.split(",")):
        for context_ms in (int(c) for c in args.contexts.split(",")):
            codes = tokenize_in_chunks(assistant.tokenize, assistant.cfg, audio, whole_codes(chunk_ms, at_least=1),
                                       whole_codes(context_ms))
            assert codes.shape == whole.shape, "chunked tokenization lost the alignment"
            answer = greedy_answer(args.model, codes)
            prefix = same_prefix(answer, reference)
            print(f"| {chunk_ms} | {context_ms} | {(codes == whole).all(axis=1).mean():.0%} | "
                  f"{(codes == whole).mean():.0%} | {'same' if prefix else 'differs'} | {prefix}/{len(reference)} |")


if __name__ == "__main__":
    main()
