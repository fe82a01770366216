"""Headless matplotlib figures for the studies (Agg backend, PNG files)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def bar_with_ci(path: Path, labels: Sequence[str], values: Sequence[float], low: Sequence[float],
                high: Sequence[float], title: str, ylabel: str, reference: float | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels) + 2), 4))
    xs = range(len(labels))
    err = [[max(0.0, v - lo) for v, lo in zip(values, low)], [max(0.0, hi - v) for v, hi in zip(values, high)]]
    ax.bar(xs, values, yerr=err, capsize=4, color="#4C72B0")
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(list(xs), labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(plt, fig, path)


def lines_with_ci(path: Path, series: dict[str, dict], title: str, xlabel: str, ylabel: str,
                  logx: bool = True) -> Path:
    """series: name -> {"x": [...], "y": [...], "low": [...] (optional), "high": [...] (optional)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, s in series.items():
        ax.plot(s["x"], s["y"], marker="o", label=name)
        if s.get("low") is not None and s.get("high") is not None:
            ax.fill_between(s["x"], s["low"], s["high"], alpha=0.2)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def confusion(path: Path, matrix: list[list[int]], labels: Sequence[str], title: str, xlabel: str,
              ylabel: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
