"""Engines: ``predict_proba(batch) -> probabilities`` over PyTorch, onnxruntime or OpenVINO, with the same
pixels in every one. :mod:`.base` opens the engine a model spec asks for (without importing torch on the
cached-ONNX path), :mod:`.cache` keeps verified exports, :mod:`.ensemble` averages models and flips.

May import: cnncli.export (to fill the cache), cnncli.data, cnncli.models, cnncli.core."""
