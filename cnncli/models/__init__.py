"""What a model is: the model card (classes, preprocessing, training record), the registry of architectures
(torchvision, timm, the built-ins) and their names, weights and their checksums, cnncli model files (safetensors
+ JSON card; never a pickle), what a ``--model`` string means (:mod:`.spec`), the classic nets, minimum inputs.

May import: cnncli.core."""
