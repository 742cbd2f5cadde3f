"""The runtime on an exported tiny package: equal to the torch reference, torch-free, clear errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from float_floor import nudged

from bcaudio.config import StreamSettings
from bcaudio.export.checkpoint import load_checkpoint, load_config
from bcaudio.export.reference_backend import TorchBackend
from bcaudio.export.reference_turn import reference_codes, reference_events
from bcaudio.runtime.audio.files import AudioInputError
from bcaudio.runtime.generation.assistant import VoiceAssistant
from bcaudio.runtime.generation.speech_loop import AudioSegment, SpeechLoop, TextDelta, collect, crossfade_join
from bcaudio.runtime.package.manifest import MANIFEST, ManifestError, load_manifest
from bcaudio.runtime.package.ort_backend import OrtBackend
from bcaudio.runtime.package.text_codec import TextCodec

# The float floor may be no larger than this (1 % of full scale): above it a waveform comparison sees nothing, while
# the f0 one float32 step off that an fp32 F0 predictor gives is 0.17 on tiny (README, "Validation").
FLOOR_CEILING = 1e-2
# On the shipped tiny package (63 % of samples on the clamp, README "Validation") ONNX sits at 2.6-3.1x its floor
# depending on torch's thread count, so this end-to-end bound is 4x, not float_floor's 3x (which holds on the
# unclamped copy, tests/test_waveform_parity.py); an f0 one float32 step off is ~200x.
CLAMPED_MARGIN = 4.0


@pytest.fixture(scope="module")
def tiny(tiny_exported: tuple[Path, Path]) -> tuple[Path, Path]:
    return tiny_exported


def test_greedy_turn_equals_the_torch_reference(tiny: tuple[Path, Path], speech_16k: np.ndarray) -> None:
    ckpt, pkg = tiny
    ref = load_checkpoint(ckpt)
    codec = TextCodec(ckpt / "tokenizer.json")
    want = collect(reference_events(ref, codec, "respond", speech_16k, None, seed=0, greedy=True), 240)
    assistant = VoiceAssistant(pkg, None, generation=ref.cfg.generation.greedy(), log=lambda _: None)
    got = collect(assistant.respond(speech_16k, 16000), 240)
    assert np.array_equal(assistant.tokenize(speech_16k), reference_codes(ref, speech_16k))
    assert got.text_ids == want.text_ids and got.reason == want.reason
    assert len(got.segments) == len(want.segments) >= 1
    for g, w in zip(got.segments, want.segments, strict=True):
        assert np.array_equal(g.codes, w.codes)  # every codebook of every frame
    assert_within_the_float_floor(ref, codec, speech_16k, got, want)


def assert_within_the_float_floor(ref, codec: TextCodec, speech: np.ndarray, got, want) -> None:
    """Each segment's waveform within CLAMPED_MARGIN x the torch reference's own float32 floor (tests/float_floor.py),
    which follows how torch rounds in this process (its thread count among it: at 1 thread tiny's floor and the ONNX
    gap both rise past the fixed 1e-3 this test had, and it failed after a test that set torch's threads)."""
    original = nudged(ref)
    try:
        floor_turn = collect(reference_events(ref, codec, "respond", speech, None, seed=0, greedy=True), 240)
    finally:
        ref.parts["vocoder"] = original
    errors = [np.abs(g.waveform - w.waveform).max() for g, w in zip(got.segments, want.segments, strict=True)]
    floor = max(np.abs(f.waveform - w.waveform).max() for f, w in zip(floor_turn.segments, want.segments, strict=True))
    assert 0 < floor < FLOOR_CEILING and max(errors) <= CLAMPED_MARGIN * floor, (errors, floor)


def test_seeded_sampling_is_reproducible_and_multi_turn_keeps_the_cache(tiny: tuple[Path, Path],
                                                                         speech_16k: np.ndarray) -> None:
    _, pkg = tiny
    runs = []
    for _ in range(2):
        a = VoiceAssistant(pkg, None, seed=5, log=lambda _: None)
        first = collect(a.respond(speech_16k, 16000), 240)
        position = a.backend.position
        second = collect(a.respond(speech_16k[:16000], 16000), 240)
        assert a.backend.position > position  # the second turn continued the same cache
        runs.append((first.text_ids, second.text_ids, [s.codes.tolist() for s in second.segments]))
    assert runs[0] == runs[1]


class Recording:
    """Wraps a backend and keeps everything fed (less what a truncation took back), to replay it as one prompt."""

    def __init__(self, inner: OrtBackend) -> None:
        self.inner = inner
        self.fed: list[tuple[list[int], np.ndarray]] = []
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def feed(self, ids, codes=None, logits=True):
        k = self.inner.cfg.bridge.num_codebooks
        self.fed.append((list(ids), np.zeros((len(ids), k), np.int64) if codes is None else np.asarray(codes)))
        self.last = self.inner.feed(ids, codes)  # with logits always: the last feed's are compared
        return self.last

    def truncate(self, position):
        ids = [i for chunk, _ in self.fed for i in chunk][:position]
        codes = np.concatenate([c for _, c in self.fed])[:position]
        self.fed = [(ids, codes)]
        self.inner.truncate(position)

    def tokenize(self, audio16k):
        return self.inner.tokenize(audio16k)

    def audio_frame(self, hidden, choose):
        return self.inner.audio_frame(hidden, choose)

    def decode_segment(self, codes, segment, first_code=0, phase=None, flow_steps=None):
        return self.inner.decode_segment(codes, segment, first_code, phase, flow_steps)


PROMPT_ATOL = 1e-4  # fp32: the same positions through one cache fed piecewise vs fed at once


def one_prompt_gap(backend: OrtBackend, recorder: Recording) -> float:
    """Everything ``recorder`` kept, fed to ``backend`` as one prompt: the largest difference from the logits and
    hidden state of the recorder's last feed. The one comparison the multi-turn test and its negative control make."""
    ids = [i for chunk, _ in recorder.fed for i in chunk]
    codes = np.concatenate([c for _, c in recorder.fed])
    logits, hidden = backend.feed(ids, codes)
    return max(float(np.abs(logits - recorder.last[0]).max()), float(np.abs(hidden - recorder.last[1]).max()))


@pytest.mark.parametrize("history", ["published", "live"])
def test_multi_turn_equals_one_long_prompt(tiny: tuple[Path, Path], speech_16k: np.ndarray, history: str) -> None:
    """Two turns on one KV cache (with the published history: cut back and partly prefilled again) end with the
    same logits as the whole conversation fed at once."""
    ckpt, pkg = tiny
    generation = dataclasses.replace(load_config(ckpt).generation.greedy(), history=history)
    a = VoiceAssistant(pkg, None, generation=generation, log=lambda _: None)
    recorder = Recording(a.backend)
    a.loop.backend = recorder
    collect(a.respond(speech_16k[:24000], 16000), 240)
    collect(a.respond(speech_16k[24000:], 16000), 240)
    assert one_prompt_gap(OrtBackend(a.sessions), recorder) < PROMPT_ATOL


def test_one_prompt_bound_fails_on_one_weight_scaled_by_1e_3(tiny: tuple[Path, Path], tmp_path: Path,
                                                             speech_16k: np.ndarray) -> None:
    """The negative control: the whole turn fed at once to an llm graph whose last down projection is scaled by
    1 + 1e-3 fails the same comparison (the package's own graph passes it)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from bcaudio.runtime.package.sessions import PackageSessions

    ckpt, pkg = tiny
    a = VoiceAssistant(pkg, None, generation=load_config(ckpt).generation.greedy(), log=lambda _: None)
    recorder = Recording(a.backend)
    a.loop.backend = recorder
    collect(a.respond(speech_16k[:24000], 16000), 240)
    assert one_prompt_gap(OrtBackend(a.sessions), recorder) < PROMPT_ATOL
    model = onnx.load(str(pkg / "llm.onnx"))
    name = f"layers.{a.cfg.llm.layers - 1}.down_proj.weight"
    (weight,) = [t for t in model.graph.initializer if t.name == name]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1 + 1e-3), name))
    onnx.save(model, str(tmp_path / "llm.onnx"))
    sessions = PackageSessions(pkg, graphs=["llm"], log=lambda _: None)
    sessions.sessions["llm"] = ort.InferenceSession(str(tmp_path / "llm.onnx"), providers=["CPUExecutionProvider"])
    assert one_prompt_gap(OrtBackend(sessions), recorder) > PROMPT_ATOL


def published_answer(ref, tokenizer_json: Path, events: list) -> tuple[list[int], np.ndarray]:
    """The demo's record of an answer, built from its events with the `tokenizers` library and the torch audio
    tokenizer: per text step its text, decoded with special tokens and tokenized again; per segment its pieces
    joined, read back at 16 kHz and tokenized, between <audiogen_start> and <audiogen_end>."""
    import soxr
    from tokenizers import Tokenizer

    text = Tokenizer.from_file(str(tokenizer_json))
    tok, k = ref.cfg.tokens, ref.cfg.bridge.num_codebooks
    ids: list[int] = []
    codes: list[np.ndarray] = []
    step: list[int] = []
    pieces: list[np.ndarray] = []
    for event in events + [None]:
        if isinstance(event, AudioSegment):
            pieces.append(event.waveform)
            if not event.final:
                continue
        elif isinstance(event, TextDelta):
            step = event.ids
            continue
        elif event is not None:
            continue
        string = text.decode(step, skip_special_tokens=False)
        step_ids = text.encode(string, add_special_tokens=False).ids
        ids += step_ids
        codes.append(np.zeros((len(step_ids), k), np.int64))
        if event is not None:
            wave16k = soxr.resample(crossfade_join(pieces, 240), 24000, 16000, quality="HQ").astype(np.float32)
            frames = reference_codes(ref, wave16k)
            ids += [tok.audiogen_start] + [tok.audio_pad] * len(frames) + [tok.audiogen_end]
            codes.append(np.concatenate([np.zeros((1, k), np.int64), frames, np.zeros((1, k), np.int64)]))
        step, pieces = [], []
    return ids, np.concatenate(codes)


class RecordedTokens:
    """Wraps a backend and keeps the codes of every answer it re-encodes (the published history's)."""

    def __init__(self, inner: OrtBackend) -> None:
        self.inner, self.codes = inner, []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def tokenize(self, audio16k):
        self.codes.append(self.inner.tokenize(audio16k))
        return self.codes[-1]


class ReplayedTokens(TorchBackend):
    """The torch reference re-encoding its answers as the ONNX run did: the same number of frames from its own
    audio, the ONNX run's codes for them."""

    def __init__(self, ref, codes: list[np.ndarray]) -> None:
        super().__init__(ref)
        self.queue = list(codes)

    def tokenize(self, audio16k):
        own, theirs = super().tokenize(audio16k), self.queue.pop(0)
        assert own.shape == theirs.shape
        return theirs


def test_turn_two_prompt_is_the_published_history_and_equals_the_torch_reference(
        tiny: tuple[Path, Path], speech_16k: np.ndarray) -> None:
    """Turn 2 sees turn 1 as the demo rebuilds it (built here independently, with the torch audio tokenizer);
    the partly re-prefilled cache equals a fresh prefill; the torch reference rebuilds the same prompt ids, and
    given the same re-encoded codes its turn 2 is the ONNX run's token for token.

    Why only given the same codes: the re-encoded answer is the audio tokenizer's codes of each side's own
    decoded waveform, and those differ by the vocoder's float32 floor (tests/float_floor.py; up to 1e-3 on
    tiny, where the random vocoder's output sits mostly on the clamp), enough to flip a random RVQ's nearest
    codeword in some frames (measured: 11 of 168 prompt rows). So the codes may differ only inside the
    re-encoded spans, and the tokenizers agree on the same audio (test_greedy_turn_equals_the_torch_reference)."""
    ckpt, pkg = tiny
    ref = load_checkpoint(ckpt)
    generation = ref.cfg.generation.greedy()
    a = VoiceAssistant(pkg, generation=generation, log=lambda _: None)
    recorder = RecordedTokens(a.loop.backend)
    a.loop.backend = recorder
    first = list(a.respond(speech_16k, 16000))
    special = set(ref.cfg.tokens.by_id())
    assert all(t not in special for step in a.loop._log.steps for t in step.ids)  # all text in the events' ids
    assert a.loop.settle_history()
    second = collect(a.respond(speech_16k[:24000], 16000), 240)
    tok = ref.cfg.tokens
    context = a.loop.context
    start = context.index(tok.assistant) + 1
    turn2 = a.loop.turn_starts[1]
    want_ids, want_codes = published_answer(ref, ckpt / "tokenizer.json", first)
    assert context[start:turn2] == want_ids
    np.testing.assert_array_equal(np.concatenate(a.loop._codes)[start:turn2], want_codes)
    fresh = OrtBackend(a.sessions)
    fresh.feed(context, np.concatenate(a.loop._codes))
    for name, value in a.backend.past.items():
        np.testing.assert_allclose(value, fresh.past[name], atol=1e-4)

    codec = TextCodec(ckpt / "tokenizer.json")
    own = SpeechLoop(ref.cfg, TorchBackend(ref), codec, generation=generation)
    want_first = collect(own.respond(reference_codes(ref, speech_16k)), 240)
    collect(own.respond(reference_codes(ref, speech_16k[:24000])), 240)
    assert want_first.text_ids == [i for e in first if isinstance(e, TextDelta) for i in e.ids]
    assert own.context[:turn2] == context[:turn2]  # the same published prompt: text and frame counts
    differ = np.flatnonzero((np.concatenate(own._codes)[:turn2] != np.concatenate(a.loop._codes)[:turn2]).any(1))
    reencoded = {j for j in range(start, turn2) if context[j] == tok.audio_pad}  # the answer's audio frames
    assert set(differ.tolist()) <= reencoded

    assert recorder.codes
    replay = SpeechLoop(ref.cfg, ReplayedTokens(ref, recorder.codes), codec, generation=generation)
    collect(replay.respond(reference_codes(ref, speech_16k)), 240)
    want_second = collect(replay.respond(reference_codes(ref, speech_16k[:24000])), 240)
    assert replay.context[:turn2] == context[:turn2]
    np.testing.assert_array_equal(np.concatenate(replay._codes)[:turn2], np.concatenate(a.loop._codes)[:turn2])
    assert second.text_ids == want_second.text_ids and second.reason == want_second.reason
    assert [c.tolist() for c in second.segment_codes()] == [c.tolist() for c in want_second.segment_codes()]
    assert replay.context == context and not replay.backend.queue


def test_runtime_runs_a_turn_with_torch_blocked(tiny: tuple[Path, Path], tmp_path: Path,
                                                speech_16k: np.ndarray) -> None:
    _, pkg = tiny
    wav = tmp_path / "q.wav"
    import soundfile as sf

    sf.write(wav, speech_16k, 16000)
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from bcaudio.cli import main
rc = main(["respond", "--model", {str(pkg)!r}, "--input", {str(wav)!r}, "--output", {str(tmp_path / "a.wav")!r},
           "--json"])
assert "torch" not in sys.modules
sys.exit(rc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["stop"] and (tmp_path / "a.wav").exists()


@pytest.mark.parametrize("audio,rate,pattern", [
    (np.zeros(0, np.float32), 16000, "empty audio"),
    (np.zeros(16000, np.float32), 16000, "silent"),
    (np.full(400, 0.1, np.float32), 16000, "shorter than one audio token"),
    (np.full(100, np.nan, np.float32), 16000, "NaN"),
])
def test_bad_audio_gets_a_clear_message(tiny: tuple[Path, Path], audio: np.ndarray, rate: int,
                                        pattern: str) -> None:
    _, pkg = tiny
    a = VoiceAssistant(pkg, None, log=lambda _: None)
    with pytest.raises(AudioInputError, match=pattern):
        list(a.respond(audio, rate))


def test_any_rate_and_stereo_input_is_accepted(tiny: tuple[Path, Path], speech_16k: np.ndarray) -> None:
    import soxr

    _, pkg = tiny
    a = VoiceAssistant(pkg, None, log=lambda _: None)
    stereo44 = np.stack([soxr.resample(speech_16k, 16000, 44100)] * 2, axis=1)
    assert abs(len(a.prepare(stereo44, 44100)) - len(speech_16k)) <= 2


def test_corrupt_package_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    _, pkg = tiny
    bad = tmp_path / "bad"
    shutil.copytree(pkg, bad)
    with open(bad / "llm.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ManifestError, match="llm.onnx does not match its sha256"):
        load_manifest(bad)
    raw = json.loads((pkg / MANIFEST).read_text())
    raw["graphs"]["llm"].pop("inputs")
    (bad / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="graphs.llm lacks 'inputs'"):
        load_manifest(bad, verify=False)
    (bad / MANIFEST).write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(bad)


def test_a_package_of_the_sinegen2_format_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Format 2 packages feed the vocoder (mel, noise) only: their graph has no phase inputs, so they must be
    re-exported rather than fail inside onnxruntime."""
    import shutil

    _, pkg = tiny
    old = tmp_path / "old"
    shutil.copytree(pkg, old)
    raw = json.loads((pkg / MANIFEST).read_text())
    assert raw["format_version"] == 3
    assert [i["name"] for i in raw["graphs"]["vocoder"]["inputs"]] == ["mel", "noise", "harmonic_phase",
                                                                      "start_phase", "start_frame"]
    raw["format_version"] = 2
    (old / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="format version 2, this bcaudio reads 3; re-export the package"):
        load_manifest(old)


@pytest.mark.parametrize("link", ["copy", "hard", "symbolic"])
def test_a_package_of_links_names_the_link_that_onnxruntime_refuses(tiny: tuple[Path, Path], tmp_path: Path,
                                                                   link: str) -> None:
    """A package folder whose files link to another's (docs/real-scale.md bounds a 7B turn so): onnxruntime refuses
    the audio head's external data (weights inside If branches) as a symbolic link or one of several hard links,
    and the error names the file and the fix instead of asking for a re-export; a copy opens."""
    import os
    import shutil

    from bcaudio.runtime.package.sessions import PackageSessions

    _, pkg = tiny
    folder = tmp_path / link
    folder.mkdir()
    for f in pkg.iterdir():
        {"copy": shutil.copyfile, "hard": os.link, "symbolic": os.symlink}[link](f, folder / f.name)
    if link == "copy":
        assert "audio_head" in PackageSessions(folder, graphs=["audio_head"], log=lambda _: None).sessions
        return
    with pytest.raises(ManifestError, match=r"audio_head.onnx.data is a link .*; copy the file instead"):
        PackageSessions(folder, graphs=["audio_head"], log=lambda _: None)


def test_a_long_conversation_overflows_the_context_without_crashing(tiny: tuple[Path, Path],
                                                                    speech_16k: np.ndarray) -> None:
    _, pkg = tiny
    a = VoiceAssistant(pkg, None, context_tokens=400, log=lambda _: None)
    for _ in range(4):
        assert collect(a.respond(speech_16k, 16000), 240).reason in ("eos", "max_rounds")
        assert a.backend.position == len(a.loop.context) <= 400
    assert a.loop.context[0] == a.cfg.tokens.system
    assert a.loop.context.count(a.cfg.tokens.user) < 4  # older turns were dropped


def test_io_binding_path_equals_the_plain_path(tiny: tuple[Path, Path], speech_16k: np.ndarray) -> None:
    """The KV cache kept as bound OrtValues (what CUDA uses) gives the same turn as numpy round trips."""
    ckpt, pkg = tiny
    greedy = load_config(ckpt).generation.greedy()
    results = []
    for binding in (False, True):
        a = VoiceAssistant(pkg, None, generation=greedy, log=lambda _: None)
        a.backend = a.loop.backend = OrtBackend(a.sessions, io_binding=binding)
        results.append(collect(a.respond(speech_16k, 16000), 240))
        assert a.backend.io_binding is binding
    plain, bound = results
    assert bound.text_ids == plain.text_ids
    assert [s.codes.tolist() for s in bound.segments] == [s.codes.tolist() for s in plain.segments]


def test_streamed_turn_keeps_the_tokens_and_equals_the_torch_reference(tiny: tuple[Path, Path],
                                                                      speech_16k: np.ndarray) -> None:
    """Streaming changes when audio is decoded, never the tokens; ONNX windows equal the torch reference's;
    the waveform is a different rendering of the same codes (measured, see README "Streaming")."""
    ckpt, pkg = tiny
    ref = load_checkpoint(ckpt)
    codec = TextCodec(ckpt / "tokenizer.json")
    stream = StreamSettings(chunk_frames=4)
    gen = dataclasses.replace(ref.cfg.generation.greedy(), stream=stream)
    whole = collect(VoiceAssistant(pkg, None, generation=ref.cfg.generation.greedy(), log=lambda _: None)
                    .respond(speech_16k, 16000), 240)
    got = collect(VoiceAssistant(pkg, None, generation=gen, log=lambda _: None).respond(speech_16k, 16000), 240)
    ref.cfg.generation = gen
    want = collect(reference_events(ref, codec, "respond", speech_16k, None, seed=0, greedy=True), 240)
    assert got.text_ids == whole.text_ids == want.text_ids
    codes = got.segment_codes()
    assert [c.tolist() for c in codes] == [c.tolist() for c in whole.segment_codes()]
    assert len(got.segments) > len(codes), "no segment was long enough to stream: lower chunk_frames"
    assert_within_the_float_floor(ref, codec, speech_16k, got, want)
    a, b = got.waveform(240), whole.waveform(240)
    assert a.size == b.size
