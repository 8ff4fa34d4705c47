"""Summary of an ONNX file read with the ``onnx`` package alone (no torch): opset, inputs and outputs with
their shapes, node types, parameters held in initializers, and the cnncli model card from metadata_props."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from cnncli.core.errors import ModelFileError
from cnncli.models.card import METADATA_KEY, ModelCard


@dataclass
class OnnxSummary:
    path: str
    ir_version: int
    producer: str
    opsets: dict[str, int]  # domain ("ai.onnx" for the default one) -> version
    inputs: list[dict[str, Any]]  # name, dtype, shape (ints, or names of symbolic dimensions)
    outputs: list[dict[str, Any]]
    node_counts: dict[str, int]  # op type -> count, most frequent first
    total_params: int  # elements in weight initializers (int32/int64 shape and index constants excluded)
    initializer_count: int
    metadata: dict[str, Any] = field(default_factory=dict)  # the cnncli card, when present
    other_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def opset(self) -> int | None:
        return self.opsets.get("ai.onnx")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": "onnx",
            "ir_version": self.ir_version,
            "producer": self.producer,
            "opset": self.opset,
            "opsets": self.opsets,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "node_counts": self.node_counts,
            "nodes": sum(self.node_counts.values()),
            "total_params": self.total_params,
            "initializers": self.initializer_count,
            "metadata": self.metadata,
            "other_metadata": self.other_metadata,
        }


def _value_info(vi) -> dict[str, Any]:
    import onnx

    tensor = vi.type.tensor_type
    dims = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return {"name": vi.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            if tensor.elem_type else "unknown", "shape": dims}


def _count_nodes(graph, counts: Counter) -> None:
    for node in graph.node:
        counts[node.op_type] += 1
        for attr in node.attribute:  # If/Loop/Scan bodies
            if attr.HasField("g"):
                _count_nodes(attr.g, counts)
            for sub in attr.graphs:
                _count_nodes(sub, counts)


def summarize_onnx(path: str | Path) -> OnnxSummary:
    """Read ``path`` (weights in external data files are not loaded: their shapes are enough)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {path} does not exist; check the path.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:  # protobuf's DecodeError for non-models
        raise ModelFileError(f"{path} is not a readable ONNX model ({type(exc).__name__}); the file is damaged "
                             "or of another type.") from None
    graph = model.graph
    if not len(graph.node) and not len(graph.output):
        raise ModelFileError(f"{path} holds no ONNX graph; it is empty or not an ONNX model.")
    init_names = {t.name for t in graph.initializer}
    index_types = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)  # shape and index constants
    counts: Counter = Counter()
    _count_nodes(graph, counts)
    for fn in model.functions:  # local functions (the dynamo exporter may emit them)
        for node in fn.node:
            counts[node.op_type] += 1
    props = {p.key: p.value for p in model.metadata_props}
    card: dict[str, Any] = {}
    if METADATA_KEY in props:
        card = ModelCard.from_json(props.pop(METADATA_KEY)).shown_dict()
    return OnnxSummary(
        path=str(path),
        ir_version=int(model.ir_version),
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        inputs=[_value_info(v) for v in graph.input if v.name not in init_names],
        outputs=[_value_info(v) for v in graph.output],
        node_counts=dict(counts.most_common()),
        total_params=sum(prod(t.dims) for t in graph.initializer if t.data_type not in index_types),
        initializer_count=len(graph.initializer),
        metadata=card,
        other_metadata=props,
    )
