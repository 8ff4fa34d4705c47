"""Turning a PyTorch model into a verified ONNX file: export and verification (:mod:`.to_onnx`), static int8
(:mod:`.quantize`, calibration images from :mod:`.calibration`), onnxruntime helpers (:mod:`.onnx_io`) and how a
lower precision is judged against fp32 (:mod:`.judge`; multi-label models by per-class agreement at the
thresholds, :mod:`.multilabel_judge`). Used by ``cnncli export`` and by the engine cache,
which exports on demand, so it sits below the engines.

May import: cnncli.data, cnncli.models, cnncli.core."""
