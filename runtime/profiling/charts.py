"""PNG charts of profile reports: one turn's timeline, the per-stage bars, and a comparison of reports.

matplotlib is an optional extra (``pip install 'bcaudio[charts]'``): an edge box runs the profiler without
it, and the charts can be drawn later from the JSON on any machine. It is imported only here, only when a
chart is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    """One turn, a row per stage on a time axis; the gaps are ``other``. Marks first token and first audio."""
    plt = _pyplot()
    tl = report["timeline"]
    rows = [s for s in STAGES if s != "other"]
    fig, ax = plt.subplots(figsize=(11, 3.6), dpi=120)
    for y, stage in enumerate(rows):
        bars = [(s["start_ms"], s["end_ms"] - s["start_ms"]) for s in tl["spans"] if s["stage"] == stage]
        ax.broken_barh(bars, (y - 0.38, 0.76), facecolors=COLORS[stage])
    # first token and first audio are often close: their labels go on two heights
    for at, name, style, align, height in ((tl["ttft_ms"], "first token", ":", "left", 1.01),
                                           (tl["first_audio_ms"], "first audio", "--", "left", 1.08),
                                           (tl["total_ms"], "turn end", "-", "right", 1.01)):
        if at is not None:
            ax.axvline(at, color="black", linestyle=style, linewidth=1)
            ax.text(at, height, f" {name} {at:.0f} ms ", fontsize=7, va="bottom", ha=align,
                    transform=ax.get_xaxis_transform())
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlim(0, tl["total_ms"] * 1.08)
    ax.set_xlabel("ms from the end of the user's input (gaps: other)")
    ax.set_title(f"Turn {tl['turn'] + 1} timeline: {_title(report)}", fontsize=9, pad=26)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, plt, path)


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
    """Turn composition per report (stacked stage medians), first audio and RTF against each budget."""
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
    for ax, key, budget_key, xlabel in ((axes[1], "first_audio_ms", "first_audio_ms", "first audio (ms)"),
                                        (axes[2], "rtf", "rtf", "real-time factor")):
        values = [r["summary"][key]["median"] or 0.0 for r in reports]
        budgets = [r["profile"]["budget"][budget_key] for r in reports]
        ok = [r["verdict"]["first_audio_ok" if key == "first_audio_ms" else "rtf_ok"] for r in reports]
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
    fig.savefig(path, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    return path
