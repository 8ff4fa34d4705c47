"""Each training option changes what cnncli's own training does, observed through its seams: the prepared
:class:`cnncli.train.run.TrainingRun` (its ``step``: optimiser, schedule, loss, mixer; its loaders) and PyTorch's
public hooks on that optimiser and loss while :meth:`~cnncli.train.run.TrainingRun.fit` runs. A run that ignored
an option (mixup, cutmix, --balance sampler|weights, --nesterov, onecycle, --accumulate, --clip-grad) fails here;
a finite loss after one epoch, which is all the old test asked, would not."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train_data import write_digits

from cnncli.core.errors import UsageError
from cnncli.train.config import TrainConfig
from cnncli.train.run import TrainingRun

N_TRAIN, BATCH = 80, 16  # the digits fixture: 10 per class, 20% held out


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=10)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """Two digit classes, 40 and 10 images: 32 and 8 in the training split."""
    root = write_digits(tmp_path_factory.mktemp("imbalanced"), per_class=40, classes=2)
    for extra in sorted((root / "1").iterdir())[10:]:
        extra.unlink()
    return root


def config(data: Path, out: Path, **options) -> TrainConfig:
    base = dict(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=1, batch_size=BATCH,
                optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, schedule="constant", out=str(out),
                quiet=True, workers=0)
    return TrainConfig(**(base | options))


class OptimiserSteps:
    """What the optimiser saw at each of its steps (a PyTorch step pre-hook): the learning rate of each group
    and the total gradient norm it was about to apply."""

    def __init__(self, run: TrainingRun) -> None:
        self.lrs: list[list[float]] = []
        self.grad_norms: list[float] = []
        run.step.optimizer.register_step_pre_hook(self._record)

    def _record(self, optimizer, _args, _kwargs) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])
        grads = [p.grad.detach().flatten() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.grad_norms.append(float(torch.cat(grads).norm()))


def loss_targets(run: TrainingRun) -> list[torch.Tensor]:
    """The targets every training batch's loss was computed against (a forward hook on the run's criterion)."""
    seen: list[torch.Tensor] = []
    run.step.criterion.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[1].detach().cpu()))
    return seen


def one_batch(run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(run.train_loader))
    return batch.images, batch.labels


# ---------------------------------------------------------------- optimiser and schedule


def test_nesterov_reaches_the_sgd_optimiser(digits, tmp_path):
    for nesterov in (True, False):
        run = TrainingRun.prepare(config(digits, tmp_path / str(nesterov), momentum=0.9, nesterov=nesterov))
        try:
            groups = run.step.optimizer.param_groups
            assert isinstance(run.step.optimizer, torch.optim.SGD)
            assert [(g["nesterov"], g["momentum"]) for g in groups] == [(nesterov, 0.9)] * len(groups)
        finally:
            run.abandon()


def test_onecycle_rises_to_the_peak_rate_then_anneals(digits, tmp_path):
    """OneCycle over 2 epochs x 5 steps: starts at lr/25, peaks at lr about 30% in, ends far below the start;
    the constant schedule holds lr at every step."""
    lr, epochs = 0.05, 2
    curves = {}
    for schedule in ("onecycle", "constant"):
        run = TrainingRun.prepare(config(digits, tmp_path / schedule, lr=lr, epochs=epochs, schedule=schedule))
        steps = OptimiserSteps(run)
        run.fit()
        curves[schedule] = [group_lrs[0] for group_lrs in steps.lrs]
    onecycle = curves["onecycle"]
    assert len(onecycle) == epochs * math.ceil(N_TRAIN / BATCH)
    assert onecycle[0] == pytest.approx(lr / 25)
    peak = int(np.argmax(onecycle))
    assert onecycle[peak] == pytest.approx(lr, rel=0.05) and 1 <= peak <= len(onecycle) // 2, onecycle
    assert all(a <= b for a, b in zip(onecycle[:peak], onecycle[1:peak + 1])), onecycle  # rising
    assert all(a >= b for a, b in zip(onecycle[peak:], onecycle[peak + 1:])), onecycle  # annealing
    assert onecycle[-1] < onecycle[0] / 10, onecycle
    assert curves["constant"] == [lr] * len(onecycle)


def test_accumulate_steps_once_per_n_batches_like_an_n_times_larger_batch(digits, tmp_path):
    """--accumulate 2 with batches of 8 takes 5 optimiser steps over 10 batches and ends at the weights of
    batches of 16 (the same images in the same order: the sampler's permutation does not depend on the batch
    size; the mean loss of 16 is the mean of two halves' means). Stepping every batch, or not averaging the two
    gradients, fails."""
    weights, n_steps = {}, {}
    for batch, accumulate in ((8, 2), (16, 1), (8, 1)):
        run = TrainingRun.prepare(config(digits, tmp_path / f"b{batch}a{accumulate}", batch_size=batch,
                                         accumulate=accumulate, lr=0.1))
        steps = OptimiserSteps(run)
        run.fit()
        weights[batch, accumulate] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        n_steps[batch, accumulate] = len(steps.lrs)
    assert n_steps == {(8, 2): 5, (16, 1): 5, (8, 1): 10}
    for name, value in weights[16, 1].items():
        torch.testing.assert_close(weights[8, 2][name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.allclose(weights[8, 1][k], v, atol=1e-4) for k, v in weights[16, 1].items())


def test_clip_grad_bounds_every_applied_gradient_norm(digits, tmp_path):
    limit = 0.05
    norms = {}
    for clip in (limit, None):
        run = TrainingRun.prepare(config(digits, tmp_path / str(clip), clip_grad=clip, lr=0.1))
        steps = OptimiserSteps(run)
        run.fit()
        norms[clip] = steps.grad_norms
    assert max(norms[None]) > 2 * limit, norms  # unclipped, the gradients are larger than the limit ...
    assert len(norms[limit]) == len(norms[None]) and max(norms[limit]) <= limit * (1 + 1e-4), norms  # ... clipped not


# ---------------------------------------------------------------- class balance


def test_balance_sampler_draws_both_classes_equally_often(imbalanced, tmp_path):
    """32 and 8 training images: the plain sampler draws 20% of the small class each epoch; --balance sampler
    draws it about half the time (over 50 epochs of draws)."""
    fractions = {}
    for balance in ("sampler", "none"):
        run = TrainingRun.prepare(config(imbalanced, tmp_path / balance, balance=balance))
        try:
            labels = np.asarray(run.train_ds.labels())
            assert np.bincount(labels).tolist() == [32, 8]
            drawn = np.concatenate([labels[list(iter(run.train_loader.sampler))] for _ in range(50)])
            assert len(drawn) == 50 * len(labels)
            fractions[balance] = float((drawn == 1).mean())
        finally:
            run.abandon()
    assert fractions["none"] == pytest.approx(0.2)
    assert fractions["sampler"] == pytest.approx(0.5, abs=0.05), fractions


def test_balance_weights_weigh_each_class_by_its_inverse_frequency(imbalanced, tmp_path):
    """--balance weights: class c's loss weight is n / (classes * n_c) = 40/64 and 40/16; none: unweighted. The
    loss of a batch is the weighted mean PyTorch defines with exactly those weights."""
    run = TrainingRun.prepare(config(imbalanced, tmp_path / "weights", balance="weights"))
    plain = TrainingRun.prepare(config(imbalanced, tmp_path / "none"))
    try:
        weight = run.step.criterion.weight
        assert weight is not None and weight.tolist() == pytest.approx([40 / 64, 40 / 16])
        assert plain.step.criterion.weight is None
        logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
        expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([40 / 64, 40 / 16]))
        assert float(run.step.criterion(logits, labels)) == pytest.approx(float(expected))
        assert float(run.step.criterion(logits, labels)) != pytest.approx(float(plain.step.criterion(logits, labels)))
    finally:
        run.abandon()
        plain.abandon()


# ---------------------------------------------------------------- mixup and cutmix


def _mixing_weight(targets: torch.Tensor, labels: torch.Tensor) -> float:
    """lambda of a mixed batch: the target weight of each image's own label where its partner (the image before
    it, torchvision's roll) has another label."""
    own = targets[torch.arange(len(labels)), labels]
    differs = labels != labels.roll(1, 0)
    assert differs.any()
    lam = own[differs]
    torch.testing.assert_close(lam, lam[:1].expand_as(lam))  # one lambda for the batch
    return float(lam[0])


def test_mixup_blends_images_and_targets_with_the_same_weight(digits, tmp_path):
    run = TrainingRun.prepare(config(digits, tmp_path / "m", mixup=0.4))
    try:
        images, labels = one_batch(run)
        mixed, targets = run.step.mixer(images.clone(), labels.clone())
        lam = _mixing_weight(targets, labels)
        assert 0 < lam < 1
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))
    finally:
        run.abandon()


def test_cutmix_pastes_a_box_whose_area_is_the_target_weight(digits, tmp_path):
    """Every pixel comes from the image or its partner; the partner's pixels fill one box; the target weight of
    the partner is the box's share of the image. (Pixel values unique per image make the box visible exactly.)"""
    run = TrainingRun.prepare(config(digits, tmp_path / "c", cutmix=1.0))
    try:
        real, labels = one_batch(run)
        images = torch.rand(real.shape, generator=torch.Generator().manual_seed(0))
        images += torch.arange(len(labels), dtype=images.dtype)[:, None, None, None]
        for _ in range(10):  # a box of zero area is possible; another draw gives a real one
            mixed, targets = run.step.mixer(images.clone(), labels.clone())
            lam = _mixing_weight(targets, labels)
            if lam < 1:
                break
        assert 0 < lam < 1
        partner = images.roll(1, 0)
        assert ((mixed == images) | (mixed == partner)).all()  # every pixel from one of the two images
        pasted = (mixed == partner).all(0).all(0)  # the same box in every image of the batch
        assert torch.equal(pasted, (mixed != images).any(0).any(0))
        ys, xs = pasted.nonzero(as_tuple=True)
        box_area = int((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        assert int(pasted.sum()) == box_area  # one filled rectangle
        assert 1 - lam == pytest.approx(box_area / pasted.numel(), abs=1e-6)
    finally:
        run.abandon()


@pytest.mark.parametrize("option", ["mixup", "cutmix"])
def test_mixed_targets_reach_the_training_loss(digits, tmp_path, option):
    """During fit the loss sees soft targets (rows summing to 1, some not one-hot); without the option, labels."""
    run = TrainingRun.prepare(config(digits, tmp_path / option, **{option: 1.0}))
    mixed = loss_targets(run)
    run.fit()
    plain_run = TrainingRun.prepare(config(digits, tmp_path / "plain"))
    plain = loss_targets(plain_run)
    plain_run.fit()
    assert len(mixed) == len(plain) == math.ceil(N_TRAIN / BATCH)
    assert all(t.ndim == 2 and t.dtype.is_floating_point for t in mixed)
    torch.testing.assert_close(torch.cat(mixed).sum(1), torch.ones(N_TRAIN))
    assert any(float(t.max(1).values.min()) < 0.99 for t in mixed)  # some image's target is a blend
    assert all(t.ndim == 1 and t.dtype == torch.long for t in plain)


def test_hinge_loss_and_label_smoothing_reach_the_loss(digits, tmp_path):
    """--loss hinge is the multi-class margin loss (and refuses mixed targets); --label-smoothing 0.1 makes a
    perfectly confident right answer cost what PyTorch's smoothed cross-entropy says, not 0."""
    with pytest.raises(UsageError, match="hinge"):
        TrainingRun.prepare(config(digits, tmp_path / "x", loss="hinge", mixup=0.2))
    hinge = TrainingRun.prepare(config(digits, tmp_path / "h", loss="hinge"))
    smooth = TrainingRun.prepare(config(digits, tmp_path / "s", label_smoothing=0.1))
    try:
        assert isinstance(hinge.step.criterion, torch.nn.MultiMarginLoss)
        confident, label = torch.full((1, 10), -30.0), torch.tensor([3])
        confident[0, 3] = 30.0
        assert float(hinge.step.criterion(confident, label)) == 0.0
        expected = torch.nn.functional.cross_entropy(confident, label, label_smoothing=0.1)
        assert float(smooth.step.criterion(confident, label)) == pytest.approx(float(expected)) and float(expected) > 1
    finally:
        hinge.abandon()
        smooth.abandon()
