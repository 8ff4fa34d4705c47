"""Images and datasets: decoding and the one preprocessing every engine sees (:mod:`.images`), what the
user passed as inputs (files, folders, globs, @lists, stdin: :mod:`.inputs`), dataset layouts and splits
(:mod:`.layout`), the images evaluate scores (:mod:`.eval_split`) and the dataset doctor (:mod:`.check`).
Torch-free.

May import: cnncli.models (the card), cnncli.core."""
