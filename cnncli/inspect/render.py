"""Rendering model and ONNX summaries as rich tables (for people) or JSON (for programs). Names from the file
(layers, ONNX inputs, card fields, class names) are literal text on the console (:mod:`cnncli.core.console`)."""

from __future__ import annotations

import sys
from typing import IO

from rich.table import Table

from cnncli.core.console import LiteralConsole, styled, terminal_console


def human(n: float, unit: str = "") -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def shape_text(shape: list[int] | None) -> str:
    """(C, H, W) as the lecture notes write it, H x W x C; vectors as their length."""
    if not shape:
        return ""
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(str(s) for s in shape)


def _pair_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return str(v[0]) if len(set(v)) == 1 else "x".join(str(x) for x in v)


def _console(stream: IO[str] | None) -> LiteralConsole:
    return terminal_console(stream or sys.stdout)


def render_model_summary(summary, stream: IO[str] | None = None) -> None:
    console = _console(stream)
    table = Table(title=f"{summary.model_name} · input {shape_text(summary.input_shape)}", title_justify="left")
    for col, justify in (("layer", "left"), ("type", "left"), ("k/s/p/d", "left"), ("output HxWxC", "right"),
                         ("params", "right"), ("trainable", "left"), ("MACs", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for layer in summary.layers:
        ksp = ""
        if layer.kernel_size is not None:
            ksp = "/".join(_pair_text(v) for v in (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
        status = layer.trainable
        if status == "frozen":
            status = styled("frozen", "cyan")
        elif status == "partly frozen":
            status = styled("partly frozen", "yellow")
        table.add_row("  " * (layer.depth - 1) + layer.name, layer.type, ksp, shape_text(layer.output_shape),
                      f"{layer.params:,}" if layer.params else "", status, human(layer.macs) if layer.macs else "")
    console.print(table)
    rf = summary.receptive_field
    lines = [
        (f"parameters   {summary.total_params:,} (trainable {summary.trainable_params:,}, "
         f"frozen {summary.frozen_params:,})"),
        (f"MACs         {human(summary.macs)} (FLOPs {human(summary.flops)}); "
         f"not counted: {', '.join(summary.not_counted)}"),
        f"weights      {summary.weight_mb:.2f} MB (parameters and buffers)",
        f"output       {shape_text(summary.output_shape)}",
    ]
    if rf is not None:
        d = rf.to_dict()
        size, jump = ("x".join(map(str, d[k])) if isinstance(d[k], list) else d[k] for k in ("size", "jump"))
        lines.append(f"receptive field of the last {shape_text(list(rf.shape))} map: {size} px, jump {jump} px")
    meta = summary.metadata
    if meta:
        classes = meta.get("classes") or []
        shown = ", ".join(classes[:5]) + (f", ... ({len(classes)} in all)" if len(classes) > 5 else "")
        pre = meta.get("preprocessing") or {}
        lines += [
            (f"architecture {meta.get('arch')} ({meta.get('source')}), "
             f"pretrained weights: {meta.get('weights') or 'none'}"),
            f"classes      {shown}",
            *([f"task         multi-label, a sigmoid per class; thresholds {_thresholds_text(meta)}"]
              if meta.get("task") == "multilabel" else []),
            (f"preprocess   {'x'.join(str(s) for s in pre.get('input_size', []))} {pre.get('resize_mode')} "
             f"crop_pct {pre.get('crop_pct')} {pre.get('interpolation')} mean {pre.get('mean')} std {pre.get('std')}"),
        ]
        if meta.get("training"):
            lines.append(f"training     {_brief(meta['training'])}")
        extra = meta.get("extra") or {}
        if isinstance(extra.get("trainable"), str):
            n = extra.get("trainable_params")
            lines.append(f"policy       {extra['trainable']}" + (f" ({n:,} trainable)" if isinstance(n, int) else ""))
    for line in lines:
        console.print(line)


def _thresholds_text(meta: dict, limit: int = 5) -> str:
    pairs = [f"{name}: {t:.3f}" for name, t in zip(meta.get("classes") or [], meta.get("thresholds") or [])]
    return ", ".join(pairs[:limit]) + (f", ... ({len(pairs)} in all)" if len(pairs) > limit else "")


def _brief(d: dict, limit: int = 8) -> str:
    items = [(k, v) for k, v in d.items() if not isinstance(v, (dict, list))][:limit]
    return ", ".join(f"{k}={v}" for k, v in items)


def render_onnx_summary(summary, stream: IO[str] | None = None) -> None:
    console = _console(stream)
    console.print(f"{summary.path}: ONNX IR {summary.ir_version}, opset {summary.opset}"
                  f"{' (' + summary.producer + ')' if summary.producer else ''}")
    io_table = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "type", "shape"):
        io_table.add_column(col)
    for kind, items in (("input", summary.inputs), ("output", summary.outputs)):
        for v in items:
            io_table.add_row(kind, v["name"], v["dtype"], "x".join(str(d) for d in v["shape"]))
    console.print(io_table)
    nodes = Table(title=f"{sum(summary.node_counts.values())} nodes", title_justify="left")
    nodes.add_column("op type")
    nodes.add_column("count", justify="right")
    for op, n in summary.node_counts.items():
        nodes.add_row(op, str(n))
    console.print(nodes)
    console.print(f"parameters   {summary.total_params:,} in {summary.initializer_count} initializers")
    meta = summary.metadata
    if meta:
        classes = meta.get("classes") or []
        console.print(f"cnncli card  {meta.get('arch')}, {len(classes)} classes "
                      f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}), "
                      f"input {'x'.join(str(s) for s in meta['preprocessing']['input_size'])}"
                      + (f"; multi-label, thresholds {_thresholds_text(meta)}" if meta.get("task") == "multilabel"
                         else ""))
    else:
        console.print("no cnncli metadata in this file.")
