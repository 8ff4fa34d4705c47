"""``--cache-features``: run the frozen backbone once over the train and val images, keep what the head receives,
and train the head alone on those tensors (exact when the backbone is frozen, BatchNorm frozen, no augmentation)."""

from __future__ import annotations

import torch
from torch import nn

from cnncli.core.errors import UsageError
from cnncli.models.registry import head_name


@torch.no_grad()
def head_inputs(model: nn.Module, loader, device: torch.device, channels_last: bool = False, on_errors=None):
    """(features, labels): the input of the model's head for every readable image of ``loader``.

    Checks on the first batch that the head's output is the model's output (nothing after the head), else
    refuses: caching would then change what is trained.
    """
    head = model.get_submodule(head_name(model))
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    feats, labels = [], []
    was_training = model.training
    model.eval()
    try:
        from cnncli.train.datasets import device_batches

        for x, y in device_batches(loader, device, channels_last, on_errors):
            captured.clear()
            out = model(x)
            f = captured[-1]
            if not feats and not torch.allclose(head(f), out, atol=1e-4, rtol=1e-4):
                raise UsageError(f"--cache-features does not apply to this architecture (layers follow its head "
                                 f"{head_name(model)!r}); train without it.")
            feats.append(f.float().cpu())
            labels.append(y)
    finally:
        hook.remove()
        model.train(was_training)
    if not feats:
        raise UsageError("no readable images to compute features from.")
    return torch.cat(feats), torch.cat(labels)


class FeatureDataset(torch.utils.data.Dataset):
    """Cached head inputs as (tensor, label, None) items, so :func:`cnncli.train.datasets.collate` applies."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.label_tensor = features, labels

    def __len__(self) -> int:
        return len(self.label_tensor)

    def __getitem__(self, i):
        return self.features[i], int(self.label_tensor[i]), None

    def labels(self):
        return self.label_tensor.numpy()
