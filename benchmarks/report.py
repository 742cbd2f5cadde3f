"""The results document as a printed table and as ``<workdir>/results/<preset>-<date>.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bcaudio.atomic import write_json


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def format_table(result: dict[str, Any]) -> str:
    """LLM rows per variant and context, then the audio frame and the turn, then the issue's targets."""
    bw = result["bandwidth"]
    m = result["machine"]
    out = [f"bcaudio bench: preset {result['preset']}, {m['cpu_model']}, {result['threads']} thread(s), "
           f"onnxruntime {m['onnxruntime']}, {result['date']}",
           f"streaming read: {bw['single_thread_gb_s']:.1f} GB/s one thread, {bw['all_threads_gb_s']:.1f} GB/s "
           f"{bw['threads']} threads; roofline uses {bw['best_gb_s']:.1f} GB/s",
           f"load average (1 min): {result['load_average_1min']['start']:.2f} at start, "
           f"{result['load_average_1min']['end']:.2f} at end (0 on an idle machine)", ""]
    torch = result["variants"].get("torch-fp32")
    rows = []
    for name, v in result["variants"].items():
        for n, c in v["contexts"].items():
            vs = torch["contexts"][n]["decode_ms"] / c["decode_ms"] if torch else None
            forced = v.get("logits_vs_reference", {}).get("teacher_forced", {})
            rows.append([name, n, _f(c["prefill_tok_s"], ".0f"), _f(c["decode_ms"]), _f(c["decode_tok_s"], ".1f"),
                         _f(c["roofline_ms"]), _f(c["roofline_pct"], ".0f"), _f(vs),
                         f"{v['weight_bytes_per_step'] / 1e6:.1f}", _f(forced.get("rel_l2"), ".3f"),
                         _f(forced.get("top1_agreement"))])
    out += _table(["variant", "ctx", "prefill tok/s", "decode ms", "tok/s", "roofline ms", "% roofline",
                   "x torch", "weights MB/step", "logits rel L2", "top-1"], rows)
    frames = [[name, n, _f(f["llm_ms"]), _f(f["audio_head_ms"]), _f(f["full_frame_ms"]), _f(f["margin_ms"]),
               _f(f["realtime_factor"])]
              for name, v in result["variants"].items() for n, f in v.get("frame", {}).items()]
    if frames:
        out += ["", f"audio frame (1 LLM step, logits not read, + {result.get('codebooks', 8)} head steps), "
                    f"budget {result['frame_budget_ms']:.0f} ms:"]
        out += _table(["variant", "ctx", "llm ms", "head ms", "frame ms", "margin ms", "x real time"], frames)
    turns = [[name, _f(t["felt_ms"], ".0f"), t["ended_by"], _f(t["first_audio_ms"], ".0f"), _f(t["min_buffer_s"]),
              _f(t["total_ms"], ".0f"), _f(t["answer_audio_s"]), _f(t["rtf"]),
              _f(t.get("cores_busy"), ".0%"),
              str(t["prefilled_while_speaking"]), str(t["prefilled_after_speech"]),
              str(t["text_tokens_to_first_audio"]), str(t["frames_to_first_audio"])]
             for name, v in result["variants"].items() if (t := v.get("turn"))]
    if turns:
        out += ["", "spoken turn, incremental prefill (felt: last voiced sample -> first sample out; first audio: "
                    "end-of-turn decision -> first piece):"]
        out += _table(["variant", "felt ms", "ended by", "first audio ms", "min buffer s", "turn ms", "answer s", "RTF",
                       "cores busy", "prefilled while speaking",
                       "after", "text tokens to 1st audio", "frames to 1st audio"], turns)
    if result.get("sessions"):
        sess = result["sessions"]
        out += ["", f"conversations at once on {sess['variant']} ({sess['device_profile']}), aggregate frames/s:"]
        out += _table(["sessions", "steps", "frames/s", "x one session", "decode loop frames/s", "x one",
                       "first audio median ms", "max ms", "worst RTF", "mean llm batch", "cores busy"],
                      [[str(r["sessions"]), "batched" if r["batched"] else "separate",
                        _f(r["aggregate_frames_per_s"], ".1f"), _f(r["x_one_session"]),
                        _f(r["decode_loop_frames_per_s"], ".1f"), _f(r["decode_loop_x_one_session"]),
                        _f(r["first_audio_ms_median"], ".0f"), _f(r["first_audio_ms_max"], ".0f"), _f(r["rtf_max"]),
                        _f(r["mean_llm_batch"], ".2f"),
                        _f(r.get("cores_busy"), ".0%")] for r in sess["runs"]])
    if result["targets"]:
        out += ["", "targets (README, Performance; small preset on 2 cores; logits vs fp32, teacher-forced):"]
        out += [f"  {k}: {v['value']:.2f} (target {v['target']}) {'met' if v['met'] else 'NOT met'}"
                for k, v in result["targets"].items()]
    return "\n".join(out)


def write_results(result: dict[str, Any], folder: Path) -> Path:
    """``<folder>/<preset>-<date>.json``; a second run on the same day gets a time suffix instead of overwriting."""
    folder.mkdir(parents=True, exist_ok=True)
    day, time_ = result["date"][:10], result["date"][11:19].replace(":", "")
    path = folder / f"{result['preset']}-{day}.json"
    if path.exists():
        path = folder / f"{result['preset']}-{day}-{time_}.json"
    return write_json(path, result, indent=1)
