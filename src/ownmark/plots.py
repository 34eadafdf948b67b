"""Plots people would rather look at than read: accuracy against an attack's strength."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ownmark.fileio import atomic_path


def plot_sweep(rows: list[dict[str, Any]], parameter: str, path: str | Path) -> Path:
    """Clean test accuracy and watermark accuracy against the swept ``parameter`` (a PNG).

    ``rows`` are :func:`ownmark.workflows.attack_model` metrics, one per value.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    values = [row["attack"][parameter] for row in rows]
    name = rows[0]["attack"]["attack"] if rows else "attack"
    figure, axes = plt.subplots(figsize=(5.5, 3.5))
    for field, label, marker in (
        ("test_accuracy", "clean test accuracy", "o"),
        ("watermark_accuracy", "watermark accuracy", "s"),
    ):
        points = [
            (v, row[field]) for v, row in zip(values, rows, strict=True) if row[field] is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, [100 * y for y in ys], marker=marker, label=label)
    axes.set_xlabel(f"{name}: {parameter}")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 101)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    axes.set_title(f"{name} sweep over {parameter}")
    return _save(figure, path)


def plot_scheme_curves(
    curves: dict[str, list[tuple[float, float, float]]], parameter: str, path: str | Path
) -> Path:
    """Watermark (solid) and clean test accuracy (dashed) against ``parameter`` for several
    schemes on one plot, like seed 001's Tables 3-4 as a figure.

    ``curves``: scheme -> ``(value, watermark accuracy, test accuracy)`` points.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.0))
    for i, (scheme, points) in enumerate(sorted(curves.items())):
        points = sorted(points)
        xs = [p[0] for p in points]
        colour = f"C{i}"
        axes.plot(xs, [100 * p[1] for p in points], "-o", color=colour, label=f"{scheme}: wm")
        axes.plot(xs, [100 * p[2] for p in points], "--s", color=colour, label=f"{scheme}: test")
    axes.set_xlabel(parameter)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 101)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=7, ncol=2)
    axes.set_title(f"watermark (solid) and clean test accuracy (dashed) vs. {parameter}")
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically and release it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return target
