"""Evaluating a multi-label model: average precision per class and its macro mean (mAP), precision / recall / F1
at the decision thresholds, micro and macro F1, exact-match (subset) accuracy, Hamming loss, the label
co-occurrence confusion, the images with the highest per-image loss; the per-class decision thresholds that
maximise F1 on validation images (what training stores in the card); the table, JSON and plots.

Numpy only (the definitions are scikit-learn's, checked against it in tests/test_multilabel_metrics.py); torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cnncli.core.errors import UsageError
from cnncli.core.numeric import average_precision, ranked_counts

TABLE_ERRORS = 12
DEFAULT_THRESHOLD = 0.5


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) points of one class, by decreasing threshold."""
    y_true = np.asarray(y_true, dtype=np.float64)
    _, tps, fps = ranked_counts(y_true, np.asarray(scores, dtype=np.float64))
    return tps / max(y_true.sum(), 1), tps / np.maximum(tps + fps, 1)


def tune_thresholds(targets: np.ndarray, probs: np.ndarray, default: float = DEFAULT_THRESHOLD) -> list[float]:
    """Per class, the threshold that maximises F1 on these images: halfway between the lowest score that is
    kept and the next one below it (so the choice does not sit on a validation image's exact score). A class with
    no positive image keeps ``default``."""
    targets, probs = np.asarray(targets, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    out = []
    for c in range(targets.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            out.append(float(default))
            continue
        scores, tps, fps = ranked_counts(targets[:, c], probs[:, c])
        f1 = 2 * tps / (tps + fps + positives)
        best = int(np.argmax(f1))  # the first maximum: the highest such threshold
        below = scores[best + 1] if best + 1 < len(scores) else 0.0
        out.append(float((scores[best] + below) / 2))
    return out


def per_image_loss(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Binary cross-entropy per image, averaged over the classes."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    t = np.asarray(targets, dtype=np.float64)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)


@dataclass
class MultiLabelResult:
    classes: list[str]
    n_images: int
    thresholds: list[float]
    mAP: float  # macro mean of the per-class AP over the classes with a positive image
    per_class: dict[str, dict]  # class -> ap, precision, recall, f1, support, threshold
    micro: dict[str, float]  # precision, recall, f1 over every (image, class) decision
    macro: dict[str, float]  # precision, recall, f1 averaged over every class
    exact_match: float  # images whose predicted label set is exactly the true one
    hamming_loss: float  # wrong (image, class) decisions / all of them
    label_cardinality: dict[str, float]  # mean labels per image: true and predicted
    co_occurrence: list[list[int]]  # [true class][predicted class]: images with both
    errors: list[dict]  # images whose label set is wrong, highest per-image loss first
    unreadable: list[dict] = field(default_factory=list)
    model: str | None = None
    engine: str | None = None
    split: dict | None = None
    scores: tuple | None = field(default=None, repr=False)  # (probs, targets), for the PR curves; not in JSON

    def to_dict(self) -> dict:
        return {"task": "multilabel", "model": self.model, "engine": self.engine, "split": self.split,
                "n_images": self.n_images, "classes": self.classes, "mAP": self.mAP, "thresholds": self.thresholds,
                "per_class": self.per_class, "micro_avg": self.micro, "macro_avg": self.macro,
                "exact_match": self.exact_match, "hamming_loss": self.hamming_loss,
                "label_cardinality": self.label_cardinality, "co_occurrence": self.co_occurrence,
                "errors": self.errors, "unreadable": self.unreadable}


def _prf(tp, fp, fn):
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return precision, recall, f1


def compute_multilabel_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str],
                               thresholds: list[float] | np.ndarray | None = None, paths: list[str] | None = None,
                               n_errors: int | None = None) -> MultiLabelResult:
    """Every metric of ``probs`` (images x classes, sigmoid) against 0/1 ``targets`` at ``thresholds`` (one per
    class; 0.5 when None). Undefined precision / recall / F1 count as 0, as scikit-learn's do."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    n = len(targets)
    if n == 0:
        raise UsageError("no readable images to evaluate.")
    thresholds = np.full(len(classes), DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, float)
    predicted = (probs >= thresholds).astype(np.float64)
    tp = (predicted * targets).sum(axis=0)
    fp = (predicted * (1 - targets)).sum(axis=0)
    fn = ((1 - predicted) * targets).sum(axis=0)
    precision, recall, f1 = _prf(tp, fp, fn)
    aps = [average_precision(targets[:, c], probs[:, c]) for c in range(len(classes))]
    scored = [a for a in aps if a is not None]
    per_class = {name: {"ap": aps[c], "precision": float(precision[c]), "recall": float(recall[c]),
                        "f1": float(f1[c]), "support": int(targets[:, c].sum()), "threshold": float(thresholds[c])}
                 for c, name in enumerate(classes)}
    micro_p, micro_r, micro_f1 = (float(v) for v in _prf(tp.sum(), fp.sum(), fn.sum()))
    wrong_sets = np.flatnonzero((predicted != targets).any(axis=1))
    loss = per_image_loss(targets, probs)
    wrong_sets = wrong_sets[np.argsort(-loss[wrong_sets], kind="stable")][:n_errors]
    errors = [{"path": paths[i] if paths else str(i),
               "true": [classes[c] for c in np.flatnonzero(targets[i])],
               "predicted": [classes[c] for c in np.flatnonzero(predicted[i])],
               "loss": float(loss[i])} for i in wrong_sets]
    return MultiLabelResult(
        classes=list(classes), n_images=n, thresholds=[float(t) for t in thresholds],
        mAP=float(np.mean(scored)) if scored else 0.0, per_class=per_class,
        micro={"precision": micro_p, "recall": micro_r, "f1": micro_f1},
        macro={"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        exact_match=float((predicted == targets).all(axis=1).mean()),
        hamming_loss=float((predicted != targets).mean()),
        label_cardinality={"true": float(targets.sum(axis=1).mean()), "predicted": float(predicted.sum(axis=1).mean())},
        co_occurrence=(targets.T @ predicted).astype(np.int64).tolist(), errors=errors, scores=(probs, targets))


# ------------------------------------------------------------------------------------------- running a model


def multilabel_card_of(model: str):
    """The card of a multi-label model file (.safetensors or .onnx), else None (a single-label model, or a
    registry name)."""
    path = Path(model)
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        from cnncli.models.checkpoint import read_card

        card = read_card(path)
    elif path.suffix.lower() == ".onnx":
        import onnx

        from cnncli.export.to_onnx import card_from_onnx_metadata

        graph = onnx.load(str(path), load_external_data=False)
        card = card_from_onnx_metadata({p.key: p.value for p in graph.metadata_props})
    else:
        return None
    return card if card is not None and card.multilabel else None


def choose_multilabel_samples(data: str, card, split: str = "auto", allow_outside: bool = False
                              ) -> tuple[list, str]:
    """The images of a multi-label manifest to score, and what they are: ``split`` auto / val rebuilds the hold-out
    the model trained with (its card's split record), all scores every image, a manifest given with ``--split all``
    or a model trained with --val-csv is scored whole."""
    from cnncli.data.multilabel import load_multilabel_dataset

    record = (card.training or {}).get("split") or {}
    same_data = record.get("dataset") and Path(record["dataset"]).resolve() == Path(data).expanduser().resolve()
    if split not in ("auto", "val", "all", "train"):
        raise UsageError(f"--split {split} does not apply to a multi-label manifest; use auto, val, train or all.")
    splits = load_multilabel_dataset(data, val_split=float(record.get("val_split") or 0.2),
                                     seed=int(record.get("seed") or 0), classes=list(card.classes),
                                     allow_outside=allow_outside)
    if split == "all" or (split == "auto" and not (same_data and not record.get("val_csv"))):
        samples, description = splits.train + splits.val, f"every image of {data}"
    elif split == "train":
        samples, description = splits.train, "the training part of the model's split"
    else:
        samples, description = splits.val, "the validation images held out when the model was trained"
    if not samples:
        raise UsageError(f"no images to score in {data} for --split {split}.")
    return samples, description


def evaluate_multilabel_model(model: str, data: str, card, split: str = "auto", batch_size: int = 32,
                              device: str = "auto", workers: int | None = None, engine: str = "auto",
                              n_errors: int | None = None, allow_outside: bool = False,
                              threshold: float | None = None) -> MultiLabelResult:
    """Evaluate a multi-label model on the images :func:`choose_multilabel_samples` picks."""
    from cnncli.engines.base import open_engine

    samples, description = choose_multilabel_samples(data, card, split, allow_outside)
    opened = open_engine(model, device=device, engine=engine)
    return score_multilabel_engine(opened, samples, card, split, description, batch_size, workers, n_errors,
                                   threshold, model=model)


def score_multilabel_engine(opened, samples: list, card, split: str, description: str, batch_size: int = 32,
                            workers: int | None = None, n_errors: int | None = None, threshold: float | None = None,
                            model: str | None = None) -> MultiLabelResult:
    """Every metric of an opened engine over multi-label ``samples`` (``split`` and ``description``: which)."""
    from cnncli.data.multilabel import label_matrix
    from cnncli.evaluate.run import engine_probabilities
    from cnncli.predict.multilabel import thresholds_for

    unlabelled = [SimpleNamespace(path=s.path, label=0) for s in samples]  # the targets are multi-hot: below
    probs, _, paths, unreadable = engine_probabilities(opened, unlabelled, batch_size, workers)
    if not paths:
        raise UsageError(f"none of the {len(samples)} images could be read; check the dataset with `cnncli inspect`.")
    by_path = {str(s.path): s for s in samples}
    targets = label_matrix([by_path[p] for p in paths], len(card.classes))
    result = compute_multilabel_metrics(probs, targets, list(card.classes), thresholds_for(card, threshold),
                                        paths, n_errors)
    result.unreadable, result.engine, result.model = unreadable, opened.name, str(model)
    result.split = {"name": split, "description": description, "n_images": len(paths)}
    return result


# ------------------------------------------------------------------------------------------- showing it


def render_multilabel(result: MultiLabelResult, stream, errors_shown: int | None = TABLE_ERRORS,
                      root: str | None = None) -> None:
    """The summary line, the per-class table (AP, threshold, precision, recall, F1, support), the averages and
    the images with the highest loss."""
    from rich.table import Table

    from cnncli.core.console import terminal_console
    from cnncli.predict.writers import shown_path

    console = terminal_console(stream)  # class names and paths are literal text, never markup
    if result.split:
        console.print(f"scored {result.n_images} images: {result.split['description']}")
    console.print(f"{result.n_images} images, {len(result.classes)} classes (multi-label): mAP {result.mAP:.4f}, "
                  f"exact match {result.exact_match:.4f}, Hamming loss {result.hamming_loss:.4f}"
                  + (f", {len(result.unreadable)} unreadable skipped" if result.unreadable else ""))
    console.print(f"engine: {result.engine}")
    table = Table(title="per class", title_justify="left")
    for col in ("class", "AP", "threshold", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, s in result.per_class.items():
        ap = "n/a" if s["ap"] is None else f"{s['ap']:.4f}"
        table.add_row(name, ap, f"{s['threshold']:.3f}", f"{s['precision']:.4f}", f"{s['recall']:.4f}",
                      f"{s['f1']:.4f}", str(s["support"]))
    for label, s in (("micro avg", result.micro), ("macro avg", result.macro)):
        table.add_row(label, "", "", f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", "")
    console.print(table)
    if result.errors:
        shown = result.errors[:errors_shown]
        errs = Table(title="most confidently wrong (highest per-image loss)", title_justify="left")
        for col in ("image", "true", "predicted", "loss"):
            errs.add_column(col, overflow="fold")
        for e in shown:
            errs.add_row(shown_path(e["path"], root), "|".join(e["true"]) or "(none)",
                         "|".join(e["predicted"]) or "(none)", f"{e['loss']:.4f}")
        console.print(errs)
        if len(shown) < len(result.errors):
            console.print(f"({len(result.errors) - len(shown)} more images with a wrong label set: --errors all, or "
                          "--format json, lists them all)")


def save_multilabel_plots(result: MultiLabelResult, folder: str | Path) -> list[Path]:
    """pr_curves.png (one precision-recall curve per class, when the probabilities are given) and
    co_occurrence.png (true class x predicted class: images with both)."""
    from cnncli.evaluate.plots import plot_confusion_matrix, pyplot, save_figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    if result.scores is not None:
        probs, targets = result.scores
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 6))
        for c, name in enumerate(result.classes):
            if targets[:, c].sum() == 0:
                continue
            recall, precision = pr_curve(targets[:, c], probs[:, c])
            ap = result.per_class[name]["ap"]
            ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="post", label=f"{name} (AP {ap:.3f})")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
               title=f"precision-recall per class, mAP {result.mAP:.3f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2 if len(result.classes) > 10 else 1)
        made.append(save_figure(fig, folder / "pr_curves.png"))
    made.append(plot_confusion_matrix(folder / "co_occurrence.png", result.co_occurrence, result.classes))
    return made
