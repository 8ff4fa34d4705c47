"""One training epoch, followed batch by batch: gradients accumulated under --accumulate are stepped even when the
epoch's last batch is unreadable, and each step reads the device once (one sync on CUDA), not once per number."""

from __future__ import annotations

import torch
from torch import nn

from cnncli.train.datasets import Batch
from cnncli.train.distributed import Dist
from cnncli.train.epoch import DeviceSettings, TrainStep, train_epoch
from cnncli.train.interrupt import StopFlag


def _step(batches, accumulate: int) -> TrainStep:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return TrainStep(
        forward=model, loader=batches, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler("cpu", enabled=False), criterion=nn.CrossEntropyLoss(), mixer=None,
        on=DeviceSettings(torch.device("cpu"), channels_last=False, amp_dtype=None), accumulate=accumulate,
        clip_grad=None, dist=Dist(), note_errors=lambda errors: None, on_diverged=lambda why: None, epochs=1,
        show_progress=False)


def _good(n: int = 2) -> Batch:
    return Batch(torch.randn(n, 4), torch.randint(0, 3, (n,)))


def test_gradients_of_the_last_readable_batches_are_stepped_when_the_final_batch_is_unreadable():
    torch.manual_seed(1)
    unreadable = Batch(None, None, ["bad.jpg: cannot identify image file"])
    step = _step([_good(), _good(), _good(), unreadable], accumulate=2)
    train_epoch(step, 1, StopFlag())
    # batches 1+2 make one step; batch 3's gradients must make the second, though batch 4 is unreadable
    assert step.scheduler.last_epoch == 2
    assert all(p.grad is None for p in step.forward.parameters())  # nothing left waiting for a step


def test_each_step_reads_the_device_once(monkeypatch):
    reads = []
    for name in ("item", "tolist", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.manual_seed(2)
    step = _step([_good() for _ in range(5)], accumulate=1)
    totals = train_epoch(step, 1, StopFlag())
    monkeypatch.undo()
    assert totals.seen == 10
    assert len(reads) == 5, reads
