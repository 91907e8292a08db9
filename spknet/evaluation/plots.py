"""DET curve and score histogram of a trial list, as PNG files (matplotlib, no display needed).

Figures are :class:`matplotlib.figure.Figure` objects drawn by the Agg canvas, never pyplot's: no global backend is
chosen, so a program that uses this library (and matplotlib itself) keeps its own. matplotlib, scipy and
scikit-learn are imported by the functions that draw: a command that never plots does not pay their second of
import at its start.
"""

import os

import numpy as np

from spknet import atomic

TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]


def _figure(size: tuple[float, float]):
    """A figure with one axis, on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, path: str) -> None:
    with atomic.atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)


def det_plot(scores, labels, path: str, title: str = "", eer: float | None = None) -> None:
    """Miss vs false-alarm probability on normal-deviate axes (the NIST DET convention)."""
    from scipy.stats import norm
    from sklearn.metrics import det_curve

    fpr, fnr, _ = det_curve(np.asarray(labels), np.asarray(scores))
    clip = lambda p: norm.ppf(np.clip(p, 5e-4, 1 - 5e-4))  # noqa: E731
    figure, axis = _figure((5, 5))
    axis.plot(clip(fpr), clip(fnr), lw=2, label=f"EER {eer:.2f}%" if eer is not None else None)
    axis.plot(clip(np.array([5e-4, 0.5])), clip(np.array([5e-4, 0.5])), "k:", lw=0.8)
    ticks = norm.ppf(TICKS)
    axis.set_xticks(ticks, [f"{100 * t:g}" for t in TICKS])
    axis.set_yticks(ticks, [f"{100 * t:g}" for t in TICKS])
    axis.set_xlim(ticks[0], ticks[-1])
    axis.set_ylim(ticks[0], ticks[-1])
    axis.set_xlabel("false alarm rate (%)")
    axis.set_ylabel("miss rate (%)")
    axis.grid(alpha=0.3)
    axis.set_title(title or "DET curve")
    if eer is not None:
        axis.legend(loc="upper right")
    _save(figure, path)


def score_histogram(scores, labels, path: str, title: str = "") -> None:
    scores, labels = np.asarray(scores), np.asarray(labels)
    figure, axis = _figure((6, 4))
    bins = np.linspace(scores.min(), scores.max(), 60)
    axis.hist(scores[labels == 0], bins=bins, alpha=0.6, density=True, label="non-target")
    axis.hist(scores[labels == 1], bins=bins, alpha=0.6, density=True, label="target")
    axis.set_xlabel("score")
    axis.set_ylabel("density")
    axis.legend()
    axis.set_title(title or "score distributions")
    _save(figure, path)


def write_plots(scores, labels, result_dir: str, name: str = "", eer: float | None = None) -> list[str]:
    """``det<name>.png`` and ``score_hist<name>.png`` in ``result_dir``; returns their paths."""
    os.makedirs(result_dir, exist_ok=True)
    det_path = os.path.join(result_dir, f"det{name}.png")
    hist_path = os.path.join(result_dir, f"score_hist{name}.png")
    det_plot(scores, labels, det_path, eer=eer)
    score_histogram(scores, labels, hist_path)
    return [det_path, hist_path]
