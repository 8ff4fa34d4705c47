"""Training and fine-tuning, the job behind ``cnncli train`` and ``cnncli finetune``: configuration, datasets
and augmentation, trainable-part policies, optimisers and schedules, the epoch loop, run folders and tracking.
The entry point is :func:`cnncli.train.loop.run_training` (a TrainConfig in, a TrainResult out).

May import: cnncli.evaluate (final metrics and plots) and every room below it."""
