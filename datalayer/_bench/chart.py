"""``datalayer bench --chart``: the scenarios' ratios to their baselines as a PNG bar chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scenarios import Result

__all__ = ["TARGETS", "write_chart"]

# The targets, as ratios to each scenario's baseline (lower is better).
# ingest_exactly_once must reach 0.8 of raw_copy's events/s; its ratio is
# raw_copy's events/s over its own, so the target is 1 / 0.8 = 1.25.
TARGETS: dict[str, float] = {
    "pk_lookup": 1.10,
    "async_pk_lookup": 1.10,
    "auth_cached": 0.5,
    "usage_summary_rollup": 0.05,
    "ingest_exactly_once": 1.25,
}

_MEETS, _MISSES, _NO_TARGET = "#2e7d32", "#c62828", "#78909c"


def write_chart(results: Sequence[Result], path: Path, *, title: str) -> list[str]:
    """Draw each result that has a ratio as a horizontal bar; write the PNG to ``path``.

    One bar per (name, threads), labelled "pk_lookup \N{MULTIPLICATION SIGN}1 thr", on a log
    axis, with a line at 1.0 (as fast as the baseline) and a mark at the
    target where ``TARGETS`` has one. Returns the labels plotted, top to
    bottom. Raises ``RuntimeError`` when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        raise RuntimeError("--chart needs matplotlib: pip install 'datalayer[bench]'") from exc

    rows = [r for r in results if r.ratio is not None]
    labels = [f"{r.name} \N{MULTIPLICATION SIGN}{r.threads} thr" for r in rows]
    ratios = [max(float(r.ratio or 0), 1e-3) for r in rows]  # a log axis has no zero
    targets = [TARGETS.get(r.name) for r in rows]

    # Figure, not pyplot: the Agg canvas without touching the process-wide backend.
    fig = Figure(figsize=(9, 1.4 + 0.42 * max(1, len(rows))), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    known = ratios + [t for t in targets if t is not None] + [1.0]
    lo, hi = min(known) / 2.5, max(known) * 6  # room for the value labels
    ys = range(len(rows))
    colors = [
        _NO_TARGET if t is None else _MEETS if ratio <= t else _MISSES
        for ratio, t in zip(ratios, targets, strict=True)
    ]
    ax.barh(ys, [ratio - lo for ratio in ratios], left=lo, color=colors, height=0.6)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first result on top
    ax.set_yticks(list(ys), labels)
    ax.axvline(1.0, color="black", linewidth=1)
    for y, ratio, target in zip(ys, ratios, targets, strict=True):
        text = (
            f"{ratio:.3g}"
            if target is None
            else f"{ratio:.3g}  (target \N{LESS-THAN OR EQUAL TO} {target:g})"
        )
        ax.annotate(
            text,
            (ratio if target is None else max(ratio, target), y),  # clear of the target mark
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
        if target is not None:
            ax.vlines(target, y - 0.4, y + 0.4, colors="black", linestyles="--", linewidth=1.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.set_xlabel("ratio to baseline, log scale (< 1 faster than the baseline)")
    ax.set_title(title)
    fig.legend(
        handles=[
            Line2D([], [], color="black", linewidth=1, label="1.0 = baseline"),
            Line2D([], [], color="black", linestyle="--", label="target (at most)"),
            Line2D([], [], color=_MEETS, linewidth=6, label="meets target"),
            Line2D([], [], color=_MISSES, linewidth=6, label="misses target"),
            Line2D([], [], color=_NO_TARGET, linewidth=6, label="no target"),
        ],
        loc="outside lower center",
        ncols=5,
        fontsize=8,
        frameon=False,
    )
    fig.savefig(path, format="png")
    return labels
