"""Scoring a model on labelled images, the job behind ``cnncli evaluate``: metrics and their rendering
(:mod:`.run`), lower precision judged on a dataset (:mod:`.precision`), multi-label models (:mod:`.multilabel`,
:mod:`.multilabel_precision`, the command in :mod:`.multilabel_run`) and the figures that evaluation and training
draw (:mod:`.plots`).

May import: cnncli.predict (its batching) and every room below it."""
