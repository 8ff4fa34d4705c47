"""The figures of an evaluation and a training run (matplotlib, Agg backend), each written atomically as PNG:
loss/accuracy curves, the confusion matrix, the reliability diagram and the error gallery."""

from __future__ import annotations

from pathlib import Path

from cnncli.core.atomic import atomic_path
from cnncli.core.text import visible


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def curves_figure(history: list[dict], best_epoch: int | None = None):
    """Loss and accuracy per epoch (train and val), integer epoch ticks, the best epoch marked on both."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in history], "o-", label="train")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in history], "o-", label="val")
        if best_epoch in epochs:
            value = float(history[epochs.index(best_epoch)][f"val_{key}"])
            ax.axvline(best_epoch, color="0.5", linestyle=":", linewidth=1)
            ax.plot([best_epoch], [value], "*", color="crimson", markersize=14, zorder=5,
                    label=f"best epoch {best_epoch}")
        ax.set(xlabel="epoch", ylabel=title, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(0, 1.02)
    return fig


def plot_curves(path: Path, history: list[dict], best_epoch: int | None = None) -> Path:
    return save_figure(curves_figure(history, best_epoch), path)


def plot_confusion_matrix(path: Path, matrix, classes: list[str]) -> Path:
    import numpy as np

    plt = pyplot()
    m = np.asarray(matrix)
    n = len(classes)
    size = min(20, max(4, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="confusion matrix")
    labels = [visible(name) for name in classes]  # literal: no mathtext from a `$`, non-UTF-8 bytes escaped
    ax.set_xticklabels(labels, rotation=90, parse_math=False)
    ax.set_yticklabels(labels, parse_math=False)
    if n <= 30:
        peak = m.max() if m.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if peak and m[i, j] > peak / 2 else "black")
    return save_figure(fig, path)


def reliability_figure(bins: list[dict], ece: float):
    """Accuracy per confidence bin against the diagonal; the legend sits below the axes, off the bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5.6))
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    ax.bar(centers, [b["accuracy"] if b["count"] else 0 for b in bins], width=1 / len(bins), edgecolor="k",
           alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return fig


def plot_reliability(path: Path, bins: list[dict], ece: float) -> Path:
    return save_figure(reliability_figure(bins, ece), path)


def error_gallery_figure(errors: list[dict], total: int | None = None, columns: int = 4):
    """The misclassified images, each captioned with its file name, true and predicted class and probability."""
    from cnncli.core.errors import ImageError
    from cnncli.data.images import load_image

    plt = pyplot()
    columns = max(1, min(columns, len(errors)))
    rows = (len(errors) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, err in zip(axes.flat, errors):
        name = Path(err["path"]).name
        name = name if len(name) <= 28 else name[:12] + "..." + name[-13:]
        caption = [visible(text) for text in (name, err["true"], err["predicted"])]
        ax.set_title(f"{caption[0]}\ntrue {caption[1]}\npred {caption[2]} ({err['prob']:.2f})", fontsize=8,
                     parse_math=False)
        try:
            ax.imshow(load_image(err["path"], 3))
        except (ImageError, OSError):
            ax.text(0.5, 0.5, "(unreadable now)", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    total = len(errors) if total is None else total
    heading = (f"{total} misclassified images, most confident first" if total == len(errors)
               else f"{len(errors)} of {total} misclassified images, most confident first")
    fig.suptitle(heading, fontsize=10)
    return fig


def plot_error_gallery(path: Path, errors: list[dict], total: int | None = None, columns: int = 4) -> Path | None:
    if not errors:
        return None
    return save_figure(error_gallery_figure(errors, total, columns), path)
