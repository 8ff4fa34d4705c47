"""Evaluating a classifier: top-1/top-5 accuracy, per-class precision/recall/F1/support with macro and weighted
averages, the confusion matrix, the most confidently wrong images, and calibration (ECE + reliability bins).

:func:`compute_metrics` works on probabilities (used by training for metrics.json); :func:`evaluate_engine` runs
any :class:`cnncli.engines.Engine` (PyTorch or onnxruntime) over samples through the shared eval preprocessing.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli.core.errors import UsageError

ECE_BINS = 15


@dataclass
class EvalResult:
    classes: list[str]
    n_images: int
    top1: float
    top5: float | None  # None when the task has at most 5 classes (top-5 would always be 1)
    per_class: dict[str, dict]  # class -> precision, recall, f1, support
    macro_avg: dict[str, float]
    weighted_avg: dict[str, float]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    ece: float
    reliability: list[dict]  # per bin: lower, upper, count, confidence, accuracy
    errors: list[dict]  # most confidently wrong: path, true, predicted, prob
    unreadable: list[dict] = field(default_factory=list)  # path, error
    model: str | None = None
    engine: str | None = None
    split: dict | None = None  # which images were scored: name, description (cnncli.data.eval_split)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "engine": self.engine, "split": self.split, "n_images": self.n_images,
            "classes": self.classes,
            "top1": self.top1, "top5": self.top5, "per_class": self.per_class, "macro_avg": self.macro_avg,
            "weighted_avg": self.weighted_avg, "confusion_matrix": self.confusion_matrix, "ece": self.ece,
            "reliability": self.reliability, "errors": self.errors, "unreadable": self.unreadable,
        }


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def occurring(matrix: np.ndarray) -> np.ndarray:
    """Which classes occur in the data or in the predictions: a non-zero row or column of the confusion matrix."""
    return (matrix.sum(axis=0) > 0) | (matrix.sum(axis=1) > 0)


def per_class_scores(matrix: np.ndarray, classes: list[str]) -> tuple[dict, dict, dict]:
    """Precision, recall, F1, support per class, and their macro and support-weighted averages (0 where undefined).
    The macro average is over the classes that occur in the data or in the predictions (scikit-learn's rule), so a
    1000-class model evaluated on a few classes is not averaged over hundreds of absent ones."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    per_class = {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i])} for i, c in enumerate(classes)}
    total = support.sum()
    present = occurring(matrix)
    macro = {name: float(score[present].mean()) if present.any() else 0.0
             for name, score in (("precision", precision), ("recall", recall), ("f1", f1))}
    macro["support"] = int(total)
    w = support / total if total else support
    weighted = {"precision": float((precision * w).sum()), "recall": float((recall * w).sum()),
                "f1": float((f1 * w).sum()), "support": int(total)}
    return per_class, macro, weighted


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error over equal-width confidence bins, and the bins for a reliability diagram."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    n = len(confidence)
    ece, out = 0.0, []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        conf = float(confidence[mask].mean()) if count else 0.0
        acc = float(correct[mask].mean()) if count else 0.0
        if count:
            ece += count / n * abs(acc - conf)
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count, "confidence": conf,
                    "accuracy": acc})
    return float(ece), out


TOP5_MIN_CLASSES = 6  # with 5 classes or fewer every label is in the top 5: top-5 is not reported


def top5_accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of rows whose label is among the 5 most probable classes; None for 5 classes or fewer."""
    if probs.shape[1] < TOP5_MIN_CLASSES:
        return None
    top_k = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    return float((top_k == labels[:, None]).any(axis=1).mean())


def compute_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str], paths: list[str] | None = None,
                    n_errors: int | None = None) -> EvalResult:
    """All metrics of ``probs`` against ``labels``; ``errors`` lists the misclassified images, most confident
    first: all of them, or the first ``n_errors``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        raise UsageError("no readable images to evaluate.")
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(classes))
    per_class, macro, weighted = per_class_scores(matrix, classes)
    confidence = probs[np.arange(n), predicted]
    correct = predicted == labels
    ece, bins = calibration(confidence, correct.astype(np.float64))
    wrong = np.flatnonzero(~correct)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:n_errors]  # [:None] keeps all
    errors = [{"path": paths[i] if paths else str(i), "true": classes[labels[i]], "predicted": classes[predicted[i]],
               "prob": float(confidence[i])} for i in wrong]
    return EvalResult(
        classes=list(classes), n_images=n, top1=float(correct.mean()),
        top5=top5_accuracy(probs, labels), per_class=per_class, macro_avg=macro,
        weighted_avg=weighted, confusion_matrix=matrix.tolist(), ece=ece, reliability=bins, errors=errors,
    )


def engine_probabilities(engine, samples, batch_size: int = 32, workers: int | None = None):
    """Run ``engine`` over ``samples`` with the shared eval preprocessing: (probs, labels, paths, unreadable)."""
    from cnncli.data.inputs import InputItem
    from cnncli.predict.run import probability_batches

    items = [InputItem(str(s.path)) for s in samples]
    label_of = {str(s.path): s.label for s in samples}
    probs, labels, paths, unreadable = [], [], [], []
    for batch in probability_batches(engine, items, batch_size=batch_size, workers=workers):
        if batch.probs is not None:
            probs.append(batch.probs)
        for path, ok in zip(batch.paths, batch.ok):
            if ok:
                labels.append(label_of[path])
                paths.append(path)
            else:
                unreadable.append({"path": path, "error": batch.errors[path]})
    stacked = np.concatenate(probs) if probs else np.zeros((0, engine.card.num_classes), np.float32)
    return stacked, np.asarray(labels, dtype=np.int64), paths, unreadable


def evaluate_engine(engine, samples, classes: list[str], batch_size: int = 32, workers: int | None = None,
                    n_errors: int | None = None) -> EvalResult:
    probs, labels, paths, unreadable = engine_probabilities(engine, samples, batch_size, workers)
    if not paths:
        raise UsageError(f"none of the {len(samples)} images could be read; check the dataset with `cnncli inspect`.")
    result = compute_metrics(probs, labels, classes, paths, n_errors=n_errors)
    result.unreadable = unreadable
    result.engine = engine.name
    return result


def evaluate_model(model: str, data: str | Path, split: str = "auto", batch_size: int = 32, device: str = "auto",
                   workers: int | None = None, engine: str = "auto", n_errors: int | None = None,
                   allow_outside: bool = False) -> EvalResult:
    """Evaluate a model file (.safetensors or .onnx, or a registry name) on a dataset folder / CSV, with the model's
    own class list, through :func:`cnncli.engines.open_engine` (``engine``: auto, torch or onnx). ``split`` picks
    the images (:func:`cnncli.data.eval_split.choose_eval_split`: by default none the model trained on)."""
    from cnncli.data.eval_split import choose_eval_split
    from cnncli.engines.base import open_engine

    card = None
    if str(model).endswith(".safetensors") and Path(model).is_file():  # choose the images before any export
        from cnncli.models.checkpoint import read_card

        card = read_card(model)
    opened = None
    if card is None:
        opened = open_engine(model, device=device, engine=engine)
        card = opened.card
    chosen = choose_eval_split(data, split=split, classes=list(card.classes), record=(card.training or {}).get("split"),
                               allow_outside=allow_outside)
    engine = opened or open_engine(model, device=device, engine=engine)
    if chosen.stream is not None:  # packed shards, or an object-store prefix: read as a stream
        from cnncli.evaluate.streamed import stream_probabilities

        probs, labels, paths, unreadable = stream_probabilities(engine, chosen.stream, batch_size, workers)
        result = compute_metrics(probs, labels, chosen.classes, paths, n_errors=n_errors)
        result.unreadable, result.engine = unreadable, engine.name
    else:
        result = evaluate_engine(engine, chosen.samples, chosen.classes, batch_size=batch_size, workers=workers,
                                 n_errors=n_errors)
    result.model = str(model)
    result.split = chosen.to_dict()
    result.split["n_images"] = result.n_images  # scored (unreadable images left out)
    return result


def present_classes(result: EvalResult) -> tuple[list[str], np.ndarray]:
    """The classes that occur in the data or the predictions, and the confusion matrix restricted to them (what
    the rest would add is rows and columns of zeros): a 1000-class model on a few classes stays readable."""
    matrix = np.asarray(result.confusion_matrix)
    keep = np.flatnonzero(occurring(matrix))
    return [result.classes[i] for i in keep], matrix[np.ix_(keep, keep)]


def save_plots(result: EvalResult, folder: str | Path) -> list[Path]:
    """confusion_matrix.png, reliability.png and errors.png (the most confidently wrong, captioned with file name,
    true and predicted class) in ``folder``."""
    from cnncli.evaluate.plots import plot_confusion_matrix, plot_error_gallery, plot_reliability

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names, matrix = present_classes(result)
    made = [plot_confusion_matrix(folder / "confusion_matrix.png", matrix, names),
            plot_reliability(folder / "reliability.png", result.reliability, result.ece)]
    gallery = plot_error_gallery(folder / "errors.png", result.errors[:GALLERY_ERRORS], total=len(result.errors))
    return made + ([gallery] if gallery else [])


TABLE_ERRORS = 12  # misclassified images listed in the terminal unless --errors says otherwise
GALLERY_ERRORS = 24  # at most this many images in errors.png


def _matrix_fits(names: list[str], matrix, width: int) -> bool:
    """Whether the numbered confusion matrix (the narrower of its two forms) fits ``width`` columns."""
    digits = len(str(matrix.max(initial=0)))
    label = min(24, max(len(f"{len(names) - 1} {name}") for name in names))
    return label + sum(max(digits, len(str(n))) + 1 for n in range(len(names))) <= width


def render_precision_figures(figures, stream) -> None:
    """The lines of an int8 / bf16 judgement (single- or multi-label) under the evaluation's table."""
    stream.write(f"{figures.precision} against fp32 on the same {figures.images} images:\n")
    for line in figures.lines("them"):
        stream.write("  " + line + "\n")


def render_evaluation(result: EvalResult, stream, errors_shown: int | None = TABLE_ERRORS,
                      root: str | None = None) -> None:
    """Rich tables: which images were scored, summary, per-class scores, confusion matrix, the first
    ``errors_shown`` most confidently wrong images (None: all; paths relative to the dataset folder ``root``),
    all within the terminal's width."""
    from rich import box
    from rich.table import Table

    from cnncli.core.console import terminal_console
    from cnncli.core.text import visible

    console = terminal_console(stream)  # class names and paths are literal text, never markup
    if result.split:
        console.print(f"scored {result.n_images} images: {result.split['description']}")
    top5 = "n/a (5 classes or fewer)" if result.top5 is None else f"{result.top5:.4f}"
    # the scores on a line of their own (under 80 columns), the engine on the next
    console.print(f"{result.n_images} images, {len(result.classes)} classes: top-1 {result.top1:.4f}, "
                  f"top-5 {top5}, ECE {result.ece:.4f}"
                  + (f", {len(result.unreadable)} unreadable skipped" if result.unreadable else ""))
    console.print(f"engine: {result.engine}")
    table = Table(title="per class", title_justify="left")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    names, matrix = present_classes(result)
    rows = [(name, result.per_class[name]) for name in names]
    for name, s in rows + [("macro avg", result.macro_avg), ("weighted avg", result.weighted_avg)]:
        table.add_row(name, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", str(s["support"]))
    console.print(table)
    if len(names) < len(result.classes):
        console.print(f"({len(result.classes) - len(names)} classes with no images and no predictions are not shown; "
                      "--format json lists all)")
    if len(names) <= 30 and not _matrix_fits([visible(name) for name in names], matrix, console.width):
        console.print(f"(the {len(names)}x{len(names)} confusion matrix is wider than the terminal; --plots DIR draws "
                      "it, --format json lists it)")
    elif len(names) <= 30:
        # Class names head the columns when they fit the terminal; otherwise the columns are numbered as the rows.
        digits = len(str(matrix.max(initial=0)))
        labels = [visible(name) for name in names]  # as the console shows them (control characters escaped)
        named = max(map(len, labels)) + sum(max(len(name), digits) + 1 for name in labels) < console.width
        headers = labels if named else [str(number) for number in range(len(names))]
        cm = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False)
        cm.add_column("", no_wrap=True, max_width=24)
        for header in headers:
            cm.add_column(header, justify="right", no_wrap=True, min_width=max(digits, len(header)))
        for number, (name, row) in enumerate(zip(names, matrix)):
            cm.add_row(name if named else f"{number} {name}", *[str(v) for v in row])
        console.print("confusion matrix (rows: true, columns: predicted)")
        console.print(cm)
    if result.errors:
        shown = result.errors[:errors_shown]
        errs = Table(title="most confidently wrong", title_justify="left")
        for col in ("image", "true", "predicted", "prob"):
            errs.add_column(col, overflow="fold")
        from cnncli.predict.writers import shown_path

        for e in shown:
            errs.add_row(shown_path(e["path"], root), e["true"], e["predicted"], f"{e['prob']:.4f}")
        console.print(errs)
        if len(shown) < len(result.errors):
            console.print(f"({len(result.errors) - len(shown)} more misclassified images: --errors all, "
                          "or --format json, lists them all)")
