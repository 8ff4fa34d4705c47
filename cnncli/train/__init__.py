"""Training and fine-tuning: configuration, data, trainable-part policies, optimisers, the epoch loop, run outputs.

The entry point is :func:`cnncli.train.loop.run_training` (a :class:`~cnncli.train.config.TrainConfig` in,
a :class:`~cnncli.train.loop.TrainResult` out); ``cnncli train`` and ``cnncli finetune`` only build the config.
"""
