"""Exporting a cnncli model to one self-describing ONNX file, verified against PyTorch.

:func:`export_onnx` (a library function, also used to build cached exports) traces the model with torch's
ONNX exporter (the TorchScript exporter first, the dynamo exporter where that fails), stores the model card
in the file's ``metadata_props`` under ``"cnncli"``, optionally simplifies (onnxslim), converts to fp16 or
quantizes to int8 (:mod:`cnncli.export.quantize`), then runs onnxruntime and PyTorch on the same inputs and refuses
the file beyond tolerance. The input is
``input`` (N, C, H, W) float32 and the output ``logits`` (N, classes). Files are written atomically.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli import __version__
from cnncli.core.atomic import disk_full_error, is_disk_full
from cnncli.core.errors import CnncliError, UsageError
from cnncli.core.numeric import sigmoid, softmax
from cnncli.data.inputs import image_files
from cnncli.export.onnx_io import INPUT_NAME, OUTPUT_NAME, cpu_session, run_onnx
from cnncli.export.quantize import quantize_int8, to_fp16
from cnncli.models.card import METADATA_KEY, ModelCard

if TYPE_CHECKING:
    from cnncli.export.multilabel_judge import ClassAgreement

VERSION_KEY = "cnncli_version"
DEFAULT_OPSET = 17
FP32_RELATIVE_TOLERANCE = 1e-4  # max |diff| of logits / (max - min of the PyTorch logits)
MIN_TOP1_AGREEMENT = 0.9  # fp16 / int8 versus fp32, over the verification inputs
CONFIDENT = 0.5  # fp32 top-1 probability above which a real image's top-1 must survive fp16 / int8
RANDOM_VERIFY_INPUTS = 4
PRECISIONS = ("fp32", "fp16", "int8-static", "int8-dynamic")


class ExportError(CnncliError):
    """The model could not be exported, or the exported file did not match PyTorch (exit 1)."""


@dataclass
class Verification:
    """How the ONNX file's outputs compare with PyTorch's on the same inputs."""

    inputs: int  # how many inputs were compared (random + real images)
    real_images: int
    max_abs_diff: float  # of the logits
    logit_range: float  # max - min of the PyTorch logits
    top1_agreement: float  # fraction of inputs with the same top-1 class
    real_top1_agreement: float | None  # over the real images alone
    passed: bool
    criterion: str  # what was required, in words
    confident_top1_agreement: float | None = None  # over the real images where fp32 is confident
    confident_images: int = 0
    class_agreement: ClassAgreement | None = None  # a multi-label file's decisions at the thresholds (fp16, int8)

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.logit_range if self.logit_range > 0 else self.max_abs_diff


@dataclass
class ExportReport:
    path: Path
    precision: str  # one of PRECISIONS
    exporter: str  # "torchscript" or "dynamo"
    opset: int
    dynamic_batch: bool
    simplified: bool
    input_size: tuple[int, int]
    size_bytes: int
    fp32_size_bytes: int
    seconds: float
    fp32_verification: Verification | None = None
    verification: Verification | None = None  # of the final file (same as fp32 for an fp32 export)
    notes: list[str] = field(default_factory=list)
    judged: tuple | None = None  # static int8 on the recorded val set: (figures, which images) or (None, why not)


# ---------------------------------------------------------------- inputs


def load_images(paths: Sequence[str | Path], card: ModelCard) -> np.ndarray:
    """Preprocess ``paths`` exactly as every engine does; unreadable images are skipped. (N, C, H, W)."""
    from cnncli.core.errors import ImageError
    from cnncli.data.images import load_and_preprocess

    arrays = []
    for p in paths:
        try:
            arrays.append(load_and_preprocess(p, card.preprocessing))
        except ImageError:
            continue
    c = card.preprocessing.channels
    h, w = card.preprocessing.input_size
    return np.stack(arrays) if arrays else np.zeros((0, c, h, w), np.float32)


def random_inputs(card: ModelCard, n: int = RANDOM_VERIFY_INPUTS, seed: int = 0) -> np.ndarray:
    h, w = card.preprocessing.input_size
    return np.random.default_rng(seed).standard_normal((n, card.preprocessing.channels, h, w)).astype(np.float32)


# ---------------------------------------------------------------- metadata


def card_from_onnx_metadata(metadata: dict[str, str]) -> ModelCard | None:
    """The cnncli card stored in an ONNX file's metadata_props, or None if it has none."""
    text = metadata.get(METADATA_KEY)
    return ModelCard.from_json(text) if text else None


def _set_metadata(onnx_model, card: ModelCard) -> None:
    props = {p.key: p.value for p in onnx_model.metadata_props}
    props.update({METADATA_KEY: card.to_json(), VERSION_KEY: __version__})
    del onnx_model.metadata_props[:]
    for key, value in props.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx_model.producer_name = "cnncli"
    onnx_model.producer_version = __version__


# ---------------------------------------------------------------- tracing


def _operator_in(message: str) -> str | None:
    for pattern in (r"operator '?([\w:.]+)'?", r"(aten[:.]{1,2}[\w.]+)", r"(prim::\w+)"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


@contextlib.contextmanager
def _native_output_silenced():
    """When a TorchScript trace fails, torch's C++ side prints the whole half-built graph to file descriptor 2
    (before the dynamo fallback may well succeed); keep that off the user's terminal. Exceptions still propagate."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(os.devnull, "w") as null:
        try:
            for fd in saved:
                os.dup2(null.fileno(), fd)
            yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def _trace(model, example, path: Path, opset: int, dynamic_batch: bool, exporter: str) -> None:
    import torch

    quiet = contextlib.redirect_stdout(io.StringIO())
    with warnings.catch_warnings(), quiet, _native_output_silenced():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamo=False, do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            )
        else:
            import inspect

            arg = next(iter(inspect.signature(model.forward).parameters))
            shapes = {arg: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
            program = torch.onnx.export(
                model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=max(opset, 18), dynamo=True, dynamic_shapes=shapes, external_data=False,
                verbose=False, optimize=True,
            )
            program.save(str(path), external_data=False)


def trace_to_onnx(model, card: ModelCard, path: Path, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                  exporter: str = "auto") -> str:
    """Write the fp32 graph of ``model`` to ``path``; returns which exporter worked. Raises ExportError naming
    the operator that could not be exported."""
    import torch

    h, w = card.preprocessing.input_size
    example = torch.from_numpy(random_inputs(card, n=2 if dynamic_batch else 1, seed=1))
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    for name in order:
        try:
            _trace(model, example, path, opset, dynamic_batch, name)
            return name
        except Exception as exc:  # every exporter failure becomes one sentence below
            if is_disk_full(exc):
                raise disk_full_error(path.parent) from None
            text = " ".join(str(exc).split())
            op = _operator_in(text)
            failures.append(f"{name} exporter: " + (f"operator {op} is not supported" if op else text[:200]))
    raise ExportError(
        f"{card.arch} cannot be exported to ONNX at {h}x{w} (opset {opset}): {'; '.join(failures)}; "
        "try another --opset or --image-size, or run it with the PyTorch engine."
    )


# ---------------------------------------------------------------- onnxruntime side


def _session(path: Path):
    return cpu_session(path)


def torch_logits(model, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(batch)).float().numpy()


def compare(reference: np.ndarray, candidate: np.ndarray, real_images: int, precision: str,
            min_agreement: float = MIN_TOP1_AGREEMENT, card: ModelCard | None = None) -> Verification:
    """fp32: max |diff| relative to the logit range within FP32_RELATIVE_TOLERANCE. fp16/int8: top-1 agreement
    >= ``min_agreement`` over the real images on which fp32 is confident (top-1 probability >= CONFIDENT), since
    near-ties flip under any rounding; over all real images if none is, over the random inputs if there are none.
    A multi-label ``card``'s fp16/int8 file: per-class agreement of the decisions at its thresholds instead
    (:func:`_compare_multilabel`)."""
    if card is not None and card.multilabel and precision != "fp32":
        return _compare_multilabel(reference, candidate, real_images, min_agreement, card)
    diff = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    span = float(reference.max() - reference.min()) if reference.size else 0.0
    same = reference.argmax(1) == candidate.argmax(1)
    agreement = float(same.mean()) if len(same) else 1.0
    real = float(same[-real_images:].mean()) if real_images else None
    confident = softmax(reference).max(1) >= CONFIDENT
    confident[: len(reference) - real_images] = False
    if precision == "fp32":
        relative = diff / span if span > 0 else diff
        passed = relative <= FP32_RELATIVE_TOLERANCE and bool(np.isfinite(candidate).all())
        criterion = f"max |diff| of logits <= {FP32_RELATIVE_TOLERANCE:g} of the logit range"
        confident_agreement = None
    elif confident.any():
        confident_agreement = float(same[confident].mean())
        passed = confident_agreement >= min_agreement
        criterion = (f"top-1 agreement with fp32 >= {min_agreement:.0%} over the {int(confident.sum())} real images "
                     f"where fp32 is confident (top-1 probability >= {CONFIDENT:.0%})")
    else:
        confident_agreement = None
        judged = real if real is not None else agreement
        passed = judged >= min_agreement
        over = "real images" if real is not None else "random inputs"
        criterion = f"top-1 agreement with fp32 >= {min_agreement:.0%} over the {over}"
    return Verification(len(reference), real_images, diff, span, agreement, real, passed, criterion,
                        confident_agreement, int(confident.sum()))


def _compare_multilabel(reference: np.ndarray, candidate: np.ndarray, real_images: int, min_agreement: float,
                        card: ModelCard) -> Verification:
    """Every class's decisions at the thresholds agree with fp32's for >= ``min_agreement`` of the real images (the
    random inputs if there are none), counting the decisions fp32 makes >= DECISIVE_MARGIN from the threshold
    (all of them if it makes none so)."""
    from cnncli.export.multilabel_judge import DECISIVE_MARGIN, card_thresholds, multilabel_agreement

    over = slice(len(reference) - real_images, None) if real_images else slice(None)
    measured = multilabel_agreement(sigmoid(reference[over]), sigmoid(candidate[over]), card_thresholds(card),
                                    list(card.classes))
    decisive = measured.worst_decisive
    worst = decisive or measured.worst
    where = "real images" if real_images else "random inputs"
    where += f" where fp32 is >= {DECISIVE_MARGIN:.2f} from the threshold" if decisive else ""
    same = reference.argmax(1) == candidate.argmax(1)
    real = float(same[-real_images:].mean()) if real_images else None
    return Verification(len(reference), real_images, float(np.max(np.abs(reference - candidate))),
                        float(reference.max() - reference.min()), float(same.mean()), real,
                        worst[1] >= min_agreement,
                        f"per-class agreement with fp32's decisions at the thresholds >= {min_agreement:.0%} for "
                        f"every class over the {where}", class_agreement=measured)


# ---------------------------------------------------------------- the export


def failed_path(path: Path) -> Path:
    """Where a file that failed verification is kept for inspection: ``model.unverified.onnx``."""
    return path.with_name(path.stem + ".unverified" + path.suffix)


def _reports_full_disk(export):
    """A full disk anywhere in an export (work files, onnx.save, quantization) is said as such."""

    @functools.wraps(export)
    def wrapper(model, card, path, *args, **kwargs):
        try:
            return export(model, card, path, *args, **kwargs)
        except CnncliError:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise disk_full_error(Path(path).parent) from None
            raise

    return wrapper


@_reports_full_disk
def export_onnx(
    model,
    card: ModelCard,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    precision: str = "fp32",
    simplify: bool = False,
    verify: bool = True,
    calib_images: Sequence[str | Path] = (),
    verify_images: Sequence[str | Path] = (),
    image_size: int | tuple[int, int] | None = None,
    exporter: str = "auto",
    min_agreement: float = MIN_TOP1_AGREEMENT,
    replace: bool = True,
) -> ExportReport:
    """Export ``model`` (a torch module) with ``card`` to ``path`` and verify it; see the module docstring.

    On a verification failure the file is kept as :func:`failed_path` and ExportError is raised. With
    ``replace=False`` an existing ``path`` is refused (UsageError) instead of replaced.
    """
    import onnx

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}.")
    start = time.perf_counter()
    path = Path(path)
    from cnncli.core.atomic import sweep_stale_temporaries, sweep_stale_work_folders, work_folder_prefix

    sweep_stale_temporaries(path.parent, target=path.name)  # what a killed earlier export left
    sweep_stale_work_folders(path.parent)
    if image_size is not None:
        from cnncli.models.min_input import check_image_size

        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        check_image_size(card.arch, size, card.preprocessing.channels)
        card = ModelCard.from_dict({**card.to_dict(),
                                    "preprocessing": card.preprocessing.replace(input_size=size).to_dict()})
    model = model.cpu().eval().float()
    notes: list[str] = []
    calib = load_images(calib_images, card) if calib_images else None
    real = (load_images(list(dict.fromkeys(map(str, [*verify_images, *calib_images])))[:64], card)
            if (verify_images or calib_images) else None)
    if precision == "int8-dynamic":
        notes.append("dynamic int8 quantizes weights only and runs CNN convolutions far slower than fp32 "
                     "(5-25x here); prefer --int8 static with --calib.")

    with tempfile.TemporaryDirectory(prefix=work_folder_prefix(),
                                     dir=path.parent if path.parent.exists() else None) as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        used = trace_to_onnx(model, card, fp32_path, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)
        graph = onnx.load(str(fp32_path))
        if simplify:
            import onnxslim

            with contextlib.redirect_stdout(io.StringIO()):
                graph = onnxslim.slim(graph)
        _set_metadata(graph, card)
        try:
            onnx.save(graph, str(fp32_path))
        except Exception as exc:  # protobuf cannot serialise a graph over 2 GB
            if is_disk_full(exc):
                raise disk_full_error(path.parent) from None
            weights = sum(init.ByteSize() for init in graph.graph.initializer)
            raise ExportError(
                f"{card.arch} has {weights / 1e9:.1f} GB of weights, over the 2 GB limit of one self-contained ONNX "
                "file; run this model with the PyTorch engine instead."
            ) from None
        actual_opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), opset)
        fp32_size = fp32_path.stat().st_size

        inputs = random_inputs(card, RANDOM_VERIFY_INPUTS if dynamic_batch else 1)
        n_real = 0
        if real is not None and len(real):
            inputs = np.concatenate([inputs, real])
            n_real = len(real)
        reference = torch_logits(model, inputs) if verify else None
        fp32_check = None
        if verify:
            fp32_check = compare(reference, run_onnx(_session(fp32_path), inputs), n_real, "fp32")

        final_path = fp32_path
        if precision == "fp16":
            final_path = work / "fp16.onnx"
            onnx.save(to_fp16(graph), str(final_path))
        elif precision.startswith("int8"):
            final_path = work / "int8.onnx"
            quantize_int8(fp32_path, final_path, precision.split("-")[1], calib, work, dynamic_batch)
            quantized = onnx.load(str(final_path))
            _set_metadata(quantized, card)
            onnx.save(quantized, str(final_path))

        check = fp32_check
        if verify and precision != "fp32":
            try:
                candidate = run_onnx(_session(final_path), inputs)
            except Exception as exc:  # e.g. fp16 kernels missing on this CPU
                candidate = None
                notes.append(f"the {precision} file could not run on this CPU to be verified "
                             f"({str(exc).splitlines()[0][:120]}).")
            check = (compare(reference, candidate, n_real, precision, min_agreement, card)
                     if candidate is not None else None)

        report = ExportReport(path=path, precision=precision, exporter=used, opset=actual_opset,
                              dynamic_batch=dynamic_batch, simplified=simplify,
                              input_size=card.preprocessing.input_size,
                              size_bytes=final_path.stat().st_size, fp32_size_bytes=fp32_size, seconds=0.0,
                              fp32_verification=fp32_check, verification=check, notes=notes)
        failure = _failure(fp32_check, check, precision)
        target = failed_path(path) if failure else path
        from cnncli.core.atomic import atomic_path

        if not replace and not failure:
            refuse_existing(path, force=False)  # it may have appeared while exporting
        with atomic_path(target) as out:
            out.write_bytes(final_path.read_bytes())
        report.seconds = time.perf_counter() - start
        if failure:
            report.path = target
            raise ExportError(f"{failure}; the file was kept as {target} for inspection, not as {path}.")
        return report


def _failure(fp32_check: Verification | None, check: Verification | None, precision: str) -> str | None:
    if fp32_check is not None and not fp32_check.passed:
        return (f"the ONNX graph does not match PyTorch: max |diff| of logits {fp32_check.max_abs_diff:.3g} is "
                f"{fp32_check.relative_diff:.3g} of the logit range (allowed {FP32_RELATIVE_TOLERANCE:g})")
    if check is not None and not check.passed and check.class_agreement is not None:
        name, agreement = check.class_agreement.worst_decisive or check.class_agreement.worst
        return (f"the {precision} file's decisions at the thresholds agree with fp32's for only {agreement:.1%} of "
                f"inputs for class {name!r} ({check.criterion})")
    if check is not None and not check.passed:
        agreement = next(a for a in (check.confident_top1_agreement, check.real_top1_agreement, check.top1_agreement)
                         if a is not None)
        return f"the {precision} file agrees with fp32 on top-1 for only {agreement:.1%} of inputs ({check.criterion})"
    return None


PRECISION_SUFFIX = {"fp16": ".fp16", "int8-static": ".int8", "int8-dynamic": ".int8-dynamic"}


def default_output(spec: str | None, arch: str, precision: str = "fp32") -> Path:
    """Where ``export`` writes without ``-o``: next to a model file (runs/x/best.safetensors -> runs/x/best.onnx),
    or ``<arch>.onnx`` in the current folder for a registry name; ``.fp16`` / ``.int8`` before ``.onnx``."""
    suffix = PRECISION_SUFFIX.get(precision, "")
    if spec and Path(spec).is_file():
        return Path(spec).with_name(Path(spec).stem + suffix + ".onnx")
    return Path((spec or arch).replace(":", "_").replace("/", "_") + suffix + ".onnx")


def refuse_existing(output: Path, force: bool) -> None:
    """Exports never replace a file silently: one sentence (exit 2) unless ``force``."""
    if not force and (output.exists() or output.is_symlink()):
        raise UsageError(f"{output} already exists; pass --force to replace it, or -o to write elsewhere.")


def export_model(
    spec: str | None,
    output: str | Path | None = None,
    weights: str | None = None,
    calib_dir: str | Path | None = None,
    verify_dir: str | Path | None = None,
    max_calib: int = 200,
    force: bool = False,
    **options,
) -> ExportReport:
    """The ``cnncli export`` command as a function: load a model spec (a .safetensors file, a registry name or
    None for the default model) and :func:`export_onnx` it; ``output`` defaults to :func:`default_output`.
    An existing ``output`` is refused unless ``force``."""
    from cnncli.models.spec import load_for_inference

    if spec is not None and spec.lower().endswith(".onnx"):
        raise UsageError(f"{spec} is already an ONNX file; export takes a cnncli .safetensors file or a registry name.")
    if spec is not None and not Path(spec).exists() and (spec.endswith(".safetensors") or "/" in spec):
        raise UsageError(f"{spec}: no such model file; pass a cnncli .safetensors file or a registry name.")
    precision = options.get("precision", "fp32")
    if output is not None:
        refuse_existing(Path(output), force)
    if precision == "int8-static":  # --calib, else the set train/finetune recorded in the model file
        from cnncli.export.calibration import calibration_images

        calib = calibration_images(spec, calib_dir, max_calib)
    else:
        calib = image_files(calib_dir, max_calib) if calib_dir else []
    verify_images = image_files(verify_dir, 64) if verify_dir else []
    model, card = load_for_inference(spec, weights=weights, device="cpu")
    if output is None:
        output = default_output(spec, card.arch, precision)
        refuse_existing(output, force)
    report = export_onnx(model, card, output, calib_images=calib, verify_images=verify_images, replace=force, **options)
    if card.multilabel and precision != "fp32":  # per-class agreement at the thresholds on the recorded val set
        from cnncli.export.multilabel_judge import judge_multilabel_export

        report.judged = judge_multilabel_export(model, card, report.path, precision.split("-")[0])  # int8, fp16
    elif precision == "int8-static":  # what int8 costs on the user's own held-out images, when the model records them
        from cnncli.export.judge import judge_int8_export

        report.judged = judge_int8_export(model, card, report.path)
    return report
