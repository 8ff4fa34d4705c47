"""Looking inside a model or a dataset, the job behind ``cnncli inspect``: the layer table with shapes, MACs
and receptive field (:mod:`.summary`, :mod:`.receptive_field`), ONNX files without torch (:mod:`.onnx_summary`),
pictures (filters, features, saliency, Grad-CAM: :mod:`.pictures`) and rendering (:mod:`.render`,
:mod:`.dataset_report`); :mod:`.run` is the entry point.

May import: cnncli.train (which layers a policy trains) and every room below it; not serve or scale."""
