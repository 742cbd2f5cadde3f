"""Profile reports: the JSON a machine reads (with its schema), the markdown a person reads, the verdict, compare.

The JSON is the product: charts and markdown are made from it alone, so two reports from two boxes can be
compared later without either box. The schema is a plain dict in a small JSON-Schema subset with its own
validator, so checking a report needs no extra dependency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bcaudio.documents import read_document
from bcaudio.errors import UserError
from bcaudio.runtime.package.profiles import DeviceProfile
from bcaudio.runtime.profiling.profiler import STAGES, Span, TurnMeasure, merge_spans

SCHEMA_ID = "bcaudio.profile/2"  # 2: felt latency, end-of-turn decision, playback buffer
ADDED_METRICS = ("cores_busy",)  # absent from reports written before it
COMPUTE_BOUND = 0.85  # cores busier than this over a turn: only less work (recipe, box) makes it faster
# (key, label, unit, higher_is_better): the per-turn metrics summarized as median and p90
METRICS = (
    ("felt_ms", "felt latency (last voiced sample -> first sample out)", "ms", False),
    ("voice_gap_ms", "last voiced sample -> end-of-turn decision", "ms", False),
    ("min_buffer_s", "least audio queued ahead of the speaker", "s", True),
    ("underrun_ms", "speaker ran dry", "ms", False),
    ("total_ms", "turn time", "ms", False),
    ("ttft_ms", "first text token", "ms", False),
    ("first_text_event_ms", "first text shown", "ms", False),
    ("first_audio_ms", "first audio after the decision", "ms", False),
    ("rtf", "real-time factor", "", False),
    ("cores_busy", "share of the CPU cores busy over the turn", "", False),
    ("answer_audio_s", "answer audio", "s", True),
    ("prefill_tok_s", "LLM prefill", "tok/s", True),
    ("decode_tok_s", "LLM decode", "tok/s", True),
    ("audio_head_ms_per_frame", "audio head", "ms/frame", False),
    ("flow_ms_per_segment", "flow", "ms/decode", False),
    ("vocoder_ms_per_segment", "vocoder", "ms/decode", False),
    ("encoder_ms_per_audio_s", "encoder", "ms per s of input", False),
    ("peak_rss_mb", "peak RSS", "MB", False),
    ("gpu_mem_mb", "GPU memory", "MB", False),
)

_NUM = {"type": "number"}
_OPT_NUM = {"type": ["number", "null"]}
_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_SPANS = {"type": "array", "items": {"type": "object", "required": ["stage", "start_ms", "end_ms"],
                                     "additionalProperties": False,
                                     "properties": {"stage": {"enum": list(STAGES)}, "start_ms": _NUM,
                                                    "end_ms": _NUM}}}
_STAGE_MS = {"type": "object", "required": list(STAGES), "additionalProperties": False,
             "properties": {s: {"type": "number", "minimum": 0} for s in STAGES}}


def _obj(props: dict[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
    return {"type": "object", "required": [k for k in props if k not in optional], "properties": props,
            "additionalProperties": False}


TURN_SCHEMA = _obj({
    "index": _INT, "context_tokens": _INT, "input_seconds": _NUM, "total_ms": _NUM, "ttft_ms": _OPT_NUM,
    "first_text_event_ms": _OPT_NUM, "first_audio_ms": _OPT_NUM, "answer_audio_s": _NUM, "rtf": _OPT_NUM,
    "text_tokens": _INT, "prefill_tokens": _INT, "decode_tokens": _INT, "audio_frames": _INT, "segments": _INT,
    "stop": _STR, "peak_rss_mb": _NUM, "gpu_mem_mb": _OPT_NUM, "felt_ms": _OPT_NUM, "voice_gap_ms": _NUM,
    "backlog_ms": _NUM, "ended_by": _STR, "detector_ms": _NUM, "min_buffer_s": _OPT_NUM, "underrun_ms": _OPT_NUM,
    "cores_busy": _OPT_NUM,
    **{k: _OPT_NUM for k in ("prefill_tok_s", "decode_tok_s", "audio_head_ms_per_frame", "flow_ms_per_segment",
                             "vocoder_ms_per_segment", "encoder_ms_per_audio_s")},
    "stages_ms": _STAGE_MS, "stage_share": {"type": "object", "additionalProperties": _NUM},
    "stages_to_first_audio_ms": {"type": "object", "additionalProperties": _NUM},
    "graph_runs": {"type": "object", "additionalProperties": _INT},
}, optional=ADDED_METRICS)
REPORT_SCHEMA: dict[str, Any] = _obj({
    "schema": {"enum": [SCHEMA_ID]},
    "created": _STR,
    "command": _STR,
    "model": _obj({"package": _STR, "precisions": {"type": "object", "additionalProperties": _STR},
                   "recipe_mismatches": {"type": "array", "items": _STR}}),
    "device": _obj({"cpu_model": _STR, "machine": _STR, "cores": _INT, "isa": {"type": "array", "items": _STR},
                    "gpu": {"type": ["string", "null"]}, "gpu_memory_mb": _OPT_NUM, "os": _STR, "python": _STR,
                    "onnxruntime": _STR, "available_providers": {"type": "array", "items": _STR},
                    "providers": {"type": "array", "items": _STR}}),
    "profile": _obj({"name": _STR, "description": _STR, "source": _STR, "session": {"type": "object"},
                     "recipe": {"type": "object", "additionalProperties": _STR}, "generation": {"type": "object"},
                     "budget": _obj({"felt_ms": _NUM, "rtf": _NUM}), "endpoint": {"type": "object"}}),
    "input": _obj({"source": _STR, "seconds": _NUM}),
    "settings": _obj({"turns": {"type": "integer", "minimum": 1}, "warmup": _INT, "seed": _INT,
                      "live_prefill": {"type": "boolean"}, "segment_frames": _INT},
                     optional=["live_prefill", "segment_frames"]),
    "turns": {"type": "array", "items": TURN_SCHEMA},
    "summary": {"type": "object", "required": [m[0] for m in METRICS if m[0] not in ADDED_METRICS],
                "additionalProperties": False,
                "properties": {m[0]: _obj({"median": _OPT_NUM, "p90": _OPT_NUM}) for m in METRICS}},
    "stages": {"type": "object", "required": list(STAGES), "additionalProperties": False,
               "properties": {s: _obj({"median_ms": _NUM, "p90_ms": _NUM, "share": _NUM}) for s in STAGES}},
    "timeline": _obj({"turn": _INT, "total_ms": _NUM, "ttft_ms": _OPT_NUM, "first_audio_ms": _OPT_NUM,
                      "felt_ms": _OPT_NUM, "speech_start_ms": _NUM, "voice_end_ms": _NUM, "ended_by": _STR,
                      "spans": _SPANS, "while_speaking": _SPANS,
                      "detector": {"type": "array", "items": _obj({"start_ms": _NUM, "end_ms": _NUM,
                                                                    "probability": _NUM})},
                      "playback": _obj({"start_ms": _NUM, "min_buffer_s": _OPT_NUM, "underrun_ms": _NUM,
                                        "points": {"type": "array", "items": {"type": "array", "items": _NUM}}})},
                     optional=["playback"]),
    "verdict": _obj({"meets_budget": {"type": "boolean"}, "rtf_ok": {"type": "boolean"},
                     "felt_ok": {"type": "boolean"}, "biggest_stage": _STR, "biggest_share": _NUM,
                     "real_time": {"type": "boolean"}, "rtf_stage": _STR, "compute_bound": {"type": "boolean"},
                     "line": _STR},
                    optional=["real_time", "rtf_stage", "compute_bound"]),  # absent from reports written before them
    "charts": {"type": "object", "additionalProperties": _STR},
}, optional=("charts",))

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(value: Any, schema: dict[str, Any] = REPORT_SCHEMA, where: str = "$") -> list[str]:
    """Errors of ``value`` against a JSON-Schema subset (type, enum, required, properties, additionalProperties,
    items, minimum); empty when it conforms."""
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in names):
            return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    errors: list[str] = []
    if "minimum" in schema and isinstance(value, int | float) and not isinstance(value, bool):
        if value < schema["minimum"]:
            errors.append(f"{where}: {value} is below {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{where}[{i}]")
    return errors


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    return isinstance(value, _TYPES[name])


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    have = [v for v in values if v is not None]
    if not have:
        return {"median": None, "p90": None}
    return {"median": float(np.median(have)), "p90": float(np.percentile(have, 90))}


def turn_json(m: TurnMeasure) -> dict[str, Any]:
    """One turn as plain JSON values."""
    total = sum(m.stages_ms.values())
    return {"index": m.index, "context_tokens": m.context_tokens, "input_seconds": m.input_seconds,
            "total_ms": m.total_ms, "ttft_ms": m.ttft_ms, "first_text_event_ms": m.first_text_event_ms,
            "first_audio_ms": m.first_audio_ms, "answer_audio_s": m.answer_audio_s, "rtf": m.rtf,
            "text_tokens": m.text_tokens, "prefill_tokens": m.prefill_tokens, "decode_tokens": m.decode_tokens,
            "audio_frames": m.audio_frames, "segments": m.segments, "stop": m.stop, "peak_rss_mb": m.peak_rss_mb,
            "gpu_mem_mb": m.gpu_mem_mb, "felt_ms": m.felt_ms, "voice_gap_ms": m.voice_gap_ms,
            "backlog_ms": m.backlog_ms, "ended_by": m.heard.ended_by if m.heard else "",
            "detector_ms": sum(s for _, s, _ in m.heard.detector_runs) * 1000 if m.heard else 0.0,
            "min_buffer_s": m.playback.min_buffer_s if m.playback else None,
            "underrun_ms": m.playback.underrun_ms if m.playback else None, "cores_busy": m.cores_busy, **m.rates(),
            "stages_ms": dict(m.stages_ms),
            "stage_share": {s: (v / total if total else 0.0) for s, v in m.stages_ms.items()},
            "stages_to_first_audio_ms": dict(m.stages_to_first_audio_ms), "graph_runs": dict(m.counts)}


def verdict(summary: dict[str, Any], stages: dict[str, Any], turns: Sequence[dict[str, Any]],
            profile: dict[str, Any]) -> dict[str, Any]:
    """Budget met or not on the medians of felt latency and RTF, and the stage to work on: the biggest one
    before first audio when the person waits too long, else the biggest one in the turn. An answer made slower
    than it plays (RTF >= 1, whatever the budget) is said in so many words, with the stage that decides it: the
    turn's biggest, and its own seconds per second of answer audio (a 7B llm on 2 cores: docs/real-scale.md)."""
    budget = profile["budget"]
    rtf, felt = summary["rtf"]["median"], summary["felt_ms"]["median"]
    gap, first = summary["voice_gap_ms"]["median"], summary["first_audio_ms"]["median"]
    rtf_ok = rtf is not None and rtf < budget["rtf"]
    felt_ok = felt is not None and felt <= budget["felt_ms"]
    rtf_stage = max(STAGES, key=lambda s: stages[s]["share"])
    if not felt_ok and felt is not None:
        before = {s: float(np.median([t["stages_to_first_audio_ms"].get(s, 0.0) for t in turns])) for s in STAGES}
        biggest, scope = max(before.items(), key=lambda kv: kv[1])[0], "of the time to first audio"
        share = before[biggest] / sum(before.values()) if sum(before.values()) else 0.0
    else:
        biggest, share, scope = rtf_stage, stages[rtf_stage]["share"], "of the turn"
    fmt_rtf = f"{rtf:.2f}" if rtf is not None else "n/a (no answer audio)"
    fmt_felt = (f"{felt:.0f} ms (medians: the end-of-turn decision {gap:.0f} ms after the last voiced sample, "
                f"first audio {first:.0f} ms after the decision)" if felt is not None and first is not None else "none")
    head = "meets" if rtf_ok and felt_ok else "does NOT meet"
    action = "biggest stage to fix" if not (rtf_ok and felt_ok) else "biggest stage"
    line = (f"{head} the {profile['name']} budget: felt latency {fmt_felt} ({'<=' if felt_ok else 'not <='} "
            f"{budget['felt_ms']:g} ms), RTF {fmt_rtf} ({'<' if rtf_ok else 'not <'} {budget['rtf']:g}); "
            f"{action}: {biggest} ({share:.0%} {scope})")
    real_time = rtf is not None and rtf < 1.0
    busy = summary.get("cores_busy", {}).get("median") if profile["session"].get("provider") == "cpu" else None
    compute_bound = busy is not None and busy >= COMPUTE_BOUND
    if busy is not None and not (rtf_ok and felt_ok):
        line += (f". Compute-bound: the cores were {busy:.0%} busy over the turn, so no other order of its stages "
                 f"can take more than {1 - busy:.0%} off it; less work can (a cheaper recipe, fewer flow steps) "
                 "or more cores" if compute_bound else
                 f". The cores were only {busy:.0%} busy over the turn: its stages waited on each other (the "
                 "timeline shows where)")
    if rtf is not None and not real_time:
        alone = stages[rtf_stage]["share"] * rtf  # the stage's seconds per second of answer audio
        line += (f". NOT real time: {rtf:.1f} s to make each second of answer audio; the stage that decides it: "
                 f"{rtf_stage}, {alone:.1f} s per second of audio"
                 + (" on its own" if alone >= 1.0 else "") + f" ({stages[rtf_stage]['share']:.0%} of the turn)")
    return {"meets_budget": rtf_ok and felt_ok, "rtf_ok": rtf_ok, "felt_ok": felt_ok,
            "biggest_stage": biggest, "biggest_share": share, "real_time": real_time, "rtf_stage": rtf_stage,
            "compute_bound": compute_bound, "line": line}


def timeline_json(m: TurnMeasure) -> dict[str, Any]:
    """One turn on one clock, ms from the end-of-turn decision: the user's speech and the wait after it, the
    prefill done while the user spoke, the detector's runs, the turn's graph runs and the speaker's queue."""
    def spans(items: Sequence[Span], origin: float) -> list[dict[str, Any]]:
        return [{"stage": s.stage, "start_ms": (s.start - origin) * 1000, "end_ms": (s.end - origin) * 1000}
                for s in merge_spans(items)]

    heard = m.heard
    timeline = {"turn": m.index, "total_ms": m.total_ms, "ttft_ms": m.ttft_ms, "first_audio_ms": m.first_audio_ms,
                "felt_ms": m.felt_ms, "speech_start_ms": heard.start_s * 1000 if heard else 0.0,
                "voice_end_ms": -m.voice_gap_ms, "ended_by": heard.ended_by if heard else "",
                "spans": spans(m.spans, m.start), "while_speaking": spans(m.speaking_spans, 0.0),
                "detector": [{"start_ms": t * 1000, "end_ms": (t + took) * 1000, "probability": p}
                             for t, took, p in (heard.detector_runs if heard else [])]}
    if m.playback is not None:
        timeline["playback"] = {"start_ms": m.playback.start_ms, "min_buffer_s": m.playback.min_buffer_s,
                                "underrun_ms": m.playback.underrun_ms,
                                "points": [[t, q] for t, q in m.playback.points]}
    return timeline


def build_report(measures: Sequence[TurnMeasure], profile: DeviceProfile, device: dict[str, Any], package: str,
                 precisions: dict[str, str], mismatches: list[str], input_source: str, input_seconds: float,
                 warmup: int, seed: int, command: str, live_prefill: bool = False,
                 segment_frames: int = 0) -> dict[str, Any]:
    """The whole report as JSON values; validated against ``REPORT_SCHEMA`` before it is returned.
    ``segment_frames``: the turns' answer segments were forced to that many frames (``Profiler``)."""
    if not measures:
        raise UserError("no turns were measured; pass --turns 1 or more")
    turns = [turn_json(m) for m in measures]
    summary = {key: _stats([t.get(key) for t in turns]) for key, *_ in METRICS}
    grand = sum(sum(t["stages_ms"].values()) for t in turns)  # the turns, or more: an overlapped decode runs beside
    stages = {s: {"median_ms": float(np.median([t["stages_ms"][s] for t in turns])),
                  "p90_ms": float(np.percentile([t["stages_ms"][s] for t in turns], 90)),
                  "share": sum(t["stages_ms"][s] for t in turns) / grand if grand else 0.0} for s in STAGES}
    shown = sorted(measures, key=lambda m: m.total_ms)[(len(measures) - 1) // 2]  # the median turn
    timeline = timeline_json(shown)
    prof = {"name": profile.name, "description": profile.description, "source": profile.source,
            "session": asdict(profile.session), "recipe": dict(profile.recipe),
            "generation": asdict(profile.generation), "budget": asdict(profile.budget),
            "endpoint": asdict(profile.endpoint)}
    report = {"schema": SCHEMA_ID, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
              "model": {"package": package, "precisions": precisions, "recipe_mismatches": mismatches},
              "device": device, "profile": prof, "input": {"source": input_source, "seconds": input_seconds},
              "settings": {"turns": len(measures), "warmup": warmup, "seed": seed, "live_prefill": live_prefill,
                           **({"segment_frames": segment_frames} if segment_frames else {})},
              "turns": turns,
              "summary": summary, "stages": stages, "timeline": timeline,
              "verdict": verdict(summary, stages, turns, prof)}
    errors = validate(report)
    if errors:  # a bug here, not the user's: say exactly which field
        raise AssertionError(f"profile report does not match its schema: {errors[:5]}")
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """A saved report, refused with one clear line when it is not one."""
    path = Path(path)
    report = read_document(path, UserError, "make one with `bcaudio profile --model PKG --output report.json`",
                           missing="no such report")
    errors = validate(report)
    if errors:
        raise UserError(f"{path}: not a bcaudio profile report ({'; '.join(errors[:3])}); "
                        "make one with `bcaudio profile --model PKG --output report.json`")
    return report


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def _busy(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def metric_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, median, p90) for every metric the report has a value for."""
    rows = []
    for key, label, unit, _ in METRICS:
        s = report["summary"].get(key, {"median": None})
        if s["median"] is not None:
            rows.append((f"{label} ({unit})" if unit else label, _fmt(s["median"]), _fmt(s["p90"])))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def to_markdown(report: dict[str, Any]) -> str:
    """A summary a person reads: verdict first, then metrics, stages, device and turns."""
    d, p, v = report["device"], report["profile"], report["verdict"]
    lines = [f"# Latency profile: {Path(report['model']['package']).name} on {p['name']}", "",
             f"**Verdict:** {v['line']}", "", f"Command: `{report['command']}`", "",
             f"Device: {d['cpu_model']}, {d['cores']} cores, ISA {', '.join(d['isa']) or '-'}"
             + (f", GPU {d['gpu']}" if d["gpu"] else "") + f"; onnxruntime {d['onnxruntime']} "
             f"({', '.join(d['providers'])})", "",
             f"Input: {report['input']['source']} ({report['input']['seconds']:.2f} s); "
             f"{report['settings']['turns']} measured turn(s) after {report['settings']['warmup']} warm-up; "
             + ("the user's audio was tokenized and prefilled in the profile's chunks while spoken, so times run "
                "from end of speech as in `bcaudio chat`" if report["settings"].get("live_prefill") else
                "the user's audio was tokenized and prefilled at end of speech (`--live-prefill` does it while "
                "spoken, as `bcaudio chat`)")
             + (f"; every answer segment forced to {report['settings']['segment_frames']} frames "
                "(`--segment-frames`)" if report["settings"].get("segment_frames")
                else ""), ""]
    if report["model"]["recipe_mismatches"]:
        lines += ["Package precisions differ from the profile's recipe (timings are for the package as built): "
                  + "; ".join(report["model"]["recipe_mismatches"]), ""]
    lines += ["## Metrics", "", *_table(["metric", "median", "p90"], metric_rows(report)), "", "## Stages", "",
              *_table(["stage", "median ms", "p90 ms", "share"],
                      [(s, _fmt(x["median_ms"]), _fmt(x["p90_ms"]), f"{x['share']:.1%}")
                       for s, x in report["stages"].items()]), "",
              "`other` is turn time outside every graph run: resampling, sampling, the Python loop. A decode is "
              "one flow + vocoder run: a whole segment, or one window of a streamed one.", "",
              "Felt latency is what the person waits: from the last voiced sample of the input (found on its "
              "energy) to the first answer sample leaving the player. The input is followed by silence and cut "
              "where the live endpointer (the device profile's `[endpoint]`: hangover, turn detector) decides; "
              "the chunks fed while the user spoke run where a real-time worker would run them (a backlog at "
              "the decision delays the answer), and the player starts on its next 20 ms block and plays in "
              "real time: the least audio queued ahead of it says how close it came to running dry.", "",
              "## Turns", "",
              *_table(["turn", "context", "felt ms", "ended by", "wait ms", "first audio ms", "first token ms",
                       "total ms", "RTF", "cores busy", "min buffer s", "dry ms", "answer s", "stop"],
                      [(str(t["index"] + 1), str(t["context_tokens"]), _fmt(t["felt_ms"]), t["ended_by"],
                        _fmt(t["voice_gap_ms"]), _fmt(t["first_audio_ms"]), _fmt(t["ttft_ms"]), _fmt(t["total_ms"]),
                        _fmt(t["rtf"]), _busy(t.get("cores_busy")), _fmt(t["min_buffer_s"]), _fmt(t["underrun_ms"]),
                        _fmt(t["answer_audio_s"]),
                        t["stop"]) for t in report["turns"]])]
    for name, path in report.get("charts", {}).items():
        lines += ["", f"![{name}]({Path(path).name})"]
    return "\n".join(lines) + "\n"


def comparability_notes(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """What differs between the reports besides the device and package: their turns measured different work.

    Input audio, live prefill (whether the clock starts at end of speech after incremental prefill), forced
    segment length and flow steps each change every time in the table, so a side-by-side of reports that
    differ in them is not a comparison of devices."""
    def described(value: Any) -> str:
        return ", ".join(f"{label}: {value(r)}" for label, r in zip(labels, reports, strict=True))

    checks = (("input", lambda r: f"{r['input']['source']} ({r['input']['seconds']:.2f} s)"),
              ("live prefill", lambda r: "on" if r["settings"].get("live_prefill") else "off"),
              ("segment frames", lambda r: str(r["settings"].get("segment_frames") or "the model's")),
              ("flow steps", lambda r: str(r["profile"]["generation"].get("flow_steps"))))
    notes = []
    for name, value in checks:
        if len({value(r) for r in reports}) > 1:
            notes.append(f"the reports differ in {name} ({described(value)}): their times are not "
                         "comparable")
    return notes


def compare_table(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """Side by side: device, profile, every metric's median, every stage's median ms, the verdict."""
    rows: list[list[str]] = [
        ["profile", *[r["profile"]["name"] for r in reports]],
        ["device", *[r["device"]["gpu"] or f"{r['device']['cpu_model']} x{r['device']['cores']}" for r in reports]],
        ["provider", *[(r["device"]["providers"] or ["-"])[0].replace("ExecutionProvider", "") for r in reports]],
        ["package", *[Path(r["model"]["package"]).name for r in reports]],
    ]
    for key, label, unit, _ in METRICS:
        values = [r["summary"].get(key, {"median": None})["median"] for r in reports]
        if any(v is not None for v in values):
            rows.append([f"{label} ({unit})" if unit else label, *[_fmt(v) for v in values]])
    for stage in STAGES:
        rows.append([f"{stage} ms", *[f"{_fmt(r['stages'][stage]['median_ms'])} ({r['stages'][stage]['share']:.0%})"
                                      for r in reports]])
    rows.append(["meets budget", *["yes" if r["verdict"]["meets_budget"] else "NO" for r in reports]])
    rows.append(["biggest stage", *[r["verdict"]["biggest_stage"] for r in reports]])
    table = [["", *labels], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                   strict=True)))
           for row in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
