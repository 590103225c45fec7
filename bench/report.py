"""Summaries, the printed table and the chart of a benchmark run (no I/O but the files asked for)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: n, median, p95, mean, min, max."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median": statistics.median(ms), "p95": percentile(ms, 95), "mean": statistics.fmean(ms),
            "min": min(ms), "max": max(ms)}


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def boxplots(path: Path, title: str, panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]]) -> bool:
    """One box plot per panel (label -> seconds, drawn in ms); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels, strict=True):
        labels = list(series)
        ax.boxplot([[s * 1000 for s in series[k]] for k in labels], tick_labels=labels, whis=(5, 95),
                   showfliers=True, flierprops={"markersize": 3})
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    save_figure(fig, path, title)
    return True


def save_figure(fig: Any, path: Path, title: str) -> None:
    """Title, lay out, write ``path`` (PNG) and free the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def outputs(out: Path, png: Path | None) -> str:
    """The closing lines of a run: where its JSON and chart went."""
    return f"\nresults: {out}" + (f"\nchart:   {png}" if png else "\nchart:   (matplotlib not installed)")


def run_main(main: Callable[[], int], name: str, cleaned: str) -> None:
    """``raise SystemExit(main())``; Ctrl-C exits 130 saying what was cleaned up."""
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print(f"{name}: interrupted; {cleaned}", file=sys.stderr)
        raise SystemExit(130) from None
