"""PNG charts of profile reports: one turn's timeline, the per-stage bars, and a comparison of reports.

matplotlib is an optional extra (``pip install 'bcaudio[charts]'``): an edge box runs the profiler without
it, and the charts can be drawn later from the JSON on any machine. It is imported only here, only when a
chart is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bcaudio.atomic import atomic_path
from bcaudio.errors import UserError
from bcaudio.runtime.profiling.profiler import STAGES

COLORS = {"encoder": "#4c72b0", "llm_prefill": "#dd8452", "llm_decode": "#c44e52", "audio_head": "#8172b3",
          "flow": "#55a868", "vocoder": "#64b5cd", "other": "#b0b0b0"}


class ChartsUnavailable(UserError):
    """matplotlib is missing; the message says how to get it."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ChartsUnavailable("matplotlib is not installed, so no PNG charts: pip install 'bcaudio[charts]' "
                                "(or `pip install matplotlib`); the JSON and markdown reports are complete "
                                "without it") from None
    matplotlib.use("Agg")  # files only: no display on an edge box
    import matplotlib.pyplot as plt

    return plt


def _title(report: dict[str, Any]) -> str:
    device = report["device"]["gpu"] or f"{report['device']['cpu_model']} x{report['device']['cores']}"
    return f"{Path(report['model']['package']).name} on {report['profile']['name']} ({device})"


def timeline_chart(report: dict[str, Any], path: str | Path) -> Path:
    """One turn on the felt-latency clock (0 = the last voiced sample): the user's speech, the wait for the
    end-of-turn decision, the turn detector's runs, a row per stage (prefill while the user spoke paler), and
    below, the seconds of audio queued ahead of the speaker."""
    plt = _pyplot()
    tl = report["timeline"]
    zero = tl["voice_end_ms"]  # ms from the decision
    rows = ["user speech", "wait for end of turn", "turn detector"] + [s for s in STAGES if s != "other"]
    fig, (ax, buf) = plt.subplots(2, 1, figsize=(11, 5.2), dpi=120, sharex=True,
                                  gridspec_kw={"height_ratios": [3.2, 1.2]})

    def bar(y: int, start: float, end: float, color: str, alpha: float = 1.0) -> None:
        ax.broken_barh([(start - zero, end - start)], (y - 0.38, 0.76), facecolors=color, alpha=alpha)

    bar(0, tl["speech_start_ms"], zero, "#999999")
    bar(1, zero, 0.0, "#f0c05a")
    for run in tl["detector"]:
        finished = run["probability"] > report["profile"]["endpoint"]["turn_threshold"]
        bar(2, run["start_ms"], run["end_ms"], "#e377c2" if finished else "#f7b6d2")  # dark: "finished"
    for y, stage in enumerate(rows[3:], start=3):
        for span in tl["while_speaking"]:
            if span["stage"] == stage:
                bar(y, span["start_ms"], span["end_ms"], COLORS[stage], alpha=0.45)
        for span in tl["spans"]:
            if span["stage"] == stage:
                bar(y, span["start_ms"], span["end_ms"], COLORS[stage])
    first_out = tl["playback"]["start_ms"] if "playback" in tl else None
    marks = ((0.0, f"end of turn ({tl['ended_by']})", "-.", 1.01), (tl["ttft_ms"], "first token", ":", 1.08),
             (first_out, "first sample out", "--", 1.15), (tl["total_ms"], "turn end", "-", 1.22))
    for at, name, style, height in marks:
        if at is not None:
            ax.axvline(at - zero, color="black", linestyle=style, linewidth=1)
            buf.axvline(at - zero, color="black", linestyle=style, linewidth=1)
            ax.text(at - zero, height, f" {name} {at - zero:.0f} ms ", fontsize=7, va="bottom", ha="left",
                    transform=ax.get_xaxis_transform())
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    felt = f"felt latency {tl['felt_ms']:.0f} ms" if tl["felt_ms"] is not None else "no answer audio"
    ax.set_title(f"Turn {tl['turn'] + 1}: {felt}; {_title(report)}", fontsize=9, pad=44)
    ax.grid(axis="x", alpha=0.3)
    if "playback" in tl:
        pb = tl["playback"]
        xs = [p[0] - zero for p in pb["points"]]
        buf.step(xs, [p[1] for p in pb["points"]], where="post", color="#1f77b4")
        buf.fill_between(xs, [p[1] for p in pb["points"]], step="post", alpha=0.25, color="#1f77b4")
        least = pb["min_buffer_s"]
        label = (f"least queued {least:.2f} s" if least is not None else "one piece") + (
            f", ran dry {pb['underrun_ms']:.0f} ms" if pb["underrun_ms"] > 0 else "")
        buf.text(0.01, 0.85, label, transform=buf.transAxes, fontsize=7)
    buf.set_ylabel("queued s", fontsize=8)
    buf.set_xlim(tl["speech_start_ms"] - zero, (max(tl["total_ms"], _playback_end(tl)) - zero) * 1.04)
    buf.set_xlabel("ms from the last voiced sample of the user's speech (gaps: other)")
    buf.grid(alpha=0.3)
    return _save(fig, plt, path)


def _playback_end(tl: dict[str, Any]) -> float:
    """When the speaker has played everything (ms from the decision), or 0 without playback."""
    return tl["playback"]["points"][-1][0] if "playback" in tl else 0.0


def stage_chart(report: dict[str, Any], path: str | Path) -> Path:
    """Median ms per stage with the p90 as a whisker, labeled with the stage's share of the turn."""
    plt = _pyplot()
    stages = report["stages"]
    med = [stages[s]["median_ms"] for s in STAGES]
    err = [max(0.0, stages[s]["p90_ms"] - stages[s]["median_ms"]) for s in STAGES]
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=120)
    ax.barh(STAGES, med, xerr=[[0] * len(err), err], color=[COLORS[s] for s in STAGES], capsize=3)
    for y, s in enumerate(STAGES):
        ax.text(med[y] + err[y], y, f"  {med[y]:.0f} ms, {stages[s]['share']:.0%}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(m + e for m, e in zip(med, err, strict=True)) * 1.35 or 1)
    ax.set_xlabel("ms per turn (median; whisker: p90)")
    ax.set_title(f"Stages: {_title(report)}\n{report['verdict']['line']}", fontsize=8)
    return _save(fig, plt, path)


def compare_chart(reports: Sequence[dict[str, Any]], labels: Sequence[str], path: str | Path) -> Path:
    """Turn composition per report (stacked stage medians), felt latency and RTF against each budget."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.8 * len(reports) + 2.4), dpi=120,
                             gridspec_kw={"width_ratios": [3, 1.3, 1.3]})
    ys = range(len(reports))
    left = [0.0] * len(reports)
    for stage in STAGES:
        widths = [r["stages"][stage]["median_ms"] for r in reports]
        axes[0].barh(ys, widths, left=left, color=COLORS[stage], label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes[0].set_yticks(list(ys), labels)
    axes[0].set_xlabel("ms per turn (stage medians)")
    axes[0].legend(fontsize=7, ncol=len(STAGES), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    for ax, key, xlabel in ((axes[1], "felt_ms", "felt latency (ms)"), (axes[2], "rtf", "real-time factor")):
        values = [r["summary"][key]["median"] or 0.0 for r in reports]
        budgets = [r["profile"]["budget"][key] for r in reports]
        ok = [r["verdict"]["felt_ok" if key == "felt_ms" else "rtf_ok"] for r in reports]
        ax.barh(ys, values, color=["#55a868" if good else "#c44e52" for good in ok])
        ax.scatter(budgets, list(ys), marker="|", s=400, color="black", zorder=3)
        ax.set_yticks(list(ys), [""] * len(reports))
        ax.set_xlabel(f"{xlabel}; |: budget")
    for ax in axes:
        ax.invert_yaxis()
    fig.suptitle("bcaudio profile compare", fontsize=10)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png")  # bbox keeps legends placed outside the axes
    plt.close(fig)
    return path
