"""The training recipe's parts (issue 20): no weight decay on biases and normalisation parameters, --layer-decay,
--ema (the better of the EMA and the raw weights kept as best), --lr auto (the LR range test), knowledge
distillation (--teacher), and the head phase on cached features (--head-epochs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_data import write_digits, write_textures

from cnncli.core.errors import UsageError
from cnncli.train.config import TrainConfig
from cnncli.train.run import TrainingRun

BATCH = 16


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=10)


def config(data: Path, out: Path, **options) -> TrainConfig:
    base = dict(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=1, batch_size=BATCH,
                optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, schedule="constant", out=str(out),
                quiet=True, workers=0)
    return TrainConfig(**(base | options))


def groups_by_param(run: TrainingRun) -> dict[str, dict]:
    """Each parameter's name -> the optimiser group it is in."""
    group_of = {id(p): g for g in run.step.optimizer.param_groups for p in g["params"]}
    return {name: group_of[id(p)] for name, p in run.model.named_parameters() if id(p) in group_of}


# ---------------------------------------------------------------- weight decay and layer-wise rates


def test_biases_and_normalisation_parameters_get_no_weight_decay(digits, tmp_path):
    """simplecnn has BatchNorm layers: their scales and shifts and every bias are in a weight_decay 0 group, every
    conv and linear weight at --weight-decay; --decay-norm-bias puts all of them back at --weight-decay."""
    run = TrainingRun.prepare(config(digits, tmp_path / "a", arch="simplecnn", weight_decay=0.05))
    try:
        groups = groups_by_param(run)
        shapes = {n: p.ndim for n, p in run.model.named_parameters()}
        assert any("bn" in n or shapes[n] == 1 and not n.endswith(".bias") for n in groups)  # norm parameters exist
        for name, group in groups.items():
            expected = 0.0 if shapes[name] <= 1 else 0.05
            assert group["weight_decay"] == expected, name
        assert run.step.optimizer.param_groups[0]["name"] == "head"  # the epoch's logged lr is the head's
    finally:
        run.abandon()
    run = TrainingRun.prepare(config(digits, tmp_path / "b", arch="simplecnn", weight_decay=0.05,
                                     decay_norm_bias=True))
    try:
        assert {g["weight_decay"] for g in groups_by_param(run).values()} == {0.05}
    finally:
        run.abandon()


def test_layer_decay_scales_each_backbone_stage_by_its_depth(digits, tmp_path):
    """lenet5's stages conv1, conv2, fc1, fc2 and its head: with --layer-decay 0.5 the head trains at lr, fc2 at
    lr/2, fc1 at lr/4, conv2 at lr/8, conv1 at lr/16 (times --backbone-lr-mult)."""
    lr = 0.08
    run = TrainingRun.prepare(config(digits, tmp_path / "a", lr=lr, layer_decay=0.5, backbone_lr_mult=0.5))
    try:
        groups = groups_by_param(run)
        depth = {"conv1": 4, "conv2": 3, "fc1": 2, "fc2": 1}
        head = set(run.final_plan.head)
        for name, group in groups.items():
            if name in head:
                assert group["lr"] == pytest.approx(lr), name
            else:
                stage = name.split(".")[0]
                assert group["lr"] == pytest.approx(lr * 0.5 * 0.5 ** depth[stage]), name
        assert len(groups) == sum(1 for _ in run.model.parameters())  # every parameter is trained
    finally:
        run.abandon()


# ---------------------------------------------------------------- EMA


def _ema_run(digits, out, monkeypatch=None, force=None):
    if force is not None:
        import cnncli.train.ema as ema

        monkeypatch.setattr(ema, "pick", lambda raw, averaged, monitor: force)
    run = TrainingRun.prepare(config(digits, out, epochs=2, lr=0.1, ema=True, ema_decay=0.99))
    seen: dict[int, dict] = {}

    def keep(epoch, model):
        if epoch:
            seen[epoch] = {"ema": {k: v.clone() for k, v in run.average.module.state_dict().items()},
                           "raw": {k: v.clone() for k, v in model.state_dict().items()}}

    run.fit(on_epoch_end=keep)
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    return rows, seen


def _same(saved: dict, state: dict) -> bool:
    return all(torch.equal(saved[k], state[k]) for k in saved)


def test_ema_weights_differ_from_the_raw_ones_and_best_holds_the_better(digits, tmp_path, monkeypatch):
    rows, seen = _ema_run(digits, tmp_path / "real")
    for row in rows:  # both scores recorded, and the kept one is the better by val loss (the monitor)
        better = "ema" if float(row["val_loss_ema"]) < float(row["val_loss_raw"]) else "raw"
        assert row["kept"] == better, row
        assert float(row["val_loss"]) == pytest.approx(float(row[f"val_loss_{better}"]), rel=1e-5)
        assert {"val_acc_ema", "val_acc_raw"} <= set(row)
    assert not _same(seen[2]["ema"], seen[2]["raw"])  # the average is not the weights
    _best_holds_the_kept_weights(rows, seen, tmp_path / "real")

    # when the EMA is the better (made so here), best.safetensors holds its weights, not the raw ones
    rows, seen = _ema_run(digits, tmp_path / "ema", monkeypatch, "ema")
    assert {r["kept"] for r in rows} == {"ema"}
    _best_holds_the_kept_weights(rows, seen, tmp_path / "ema")


def _best_holds_the_kept_weights(rows: list[dict], seen: dict, out: Path) -> None:
    best_epoch = min(range(len(rows)), key=lambda i: float(rows[i]["val_loss"])) + 1
    kept = rows[best_epoch - 1]["kept"]
    best = load_file(str(out / "best.safetensors"))
    assert _same(best, seen[best_epoch][kept]) and not _same(best, seen[best_epoch]["ema" if kept == "raw" else "raw"])


# ---------------------------------------------------------------- --lr auto


def test_lr_auto_picks_a_rate_inside_the_sweep_and_records_it(digits, tmp_path):
    said: list[str] = []
    run = TrainingRun.prepare(config(digits, tmp_path / "auto", lr="auto", optimizer="adamw", quiet=False),
                              log=said.append)
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    test = run.lr_test
    assert test is not None and len(test.lrs) >= 10
    assert test.lrs[0] < test.lr < test.lrs[-1]  # inside the sweep, not an end of it
    assert run.step.optimizer.param_groups[0]["lr"] == pytest.approx(test.lr)
    assert _same(start, {k: v.clone() for k, v in run.model.state_dict().items()})  # the sweep's steps undone
    run.fit()
    args = json.loads((tmp_path / "auto" / "args.json").read_text())
    assert args["lr"] == pytest.approx(test.lr) and args["lr_find"]["rule"] == test.rule
    assert args["lr_find"]["sweep"][0] <= args["lr"] <= args["lr_find"]["sweep"][1]
    assert (tmp_path / "auto" / "lr_find.png").stat().st_size > 1000
    assert any(f"--lr auto: {test.lr:.3g}" in line and "steepest descent" in line for line in said), said


# ---------------------------------------------------------------- distillation


@pytest.fixture(scope="module")
def teacher(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    TrainingRun.prepare(config(digits, out, epochs=4, optimizer="adamw", lr=3e-3)).fit()
    return out / "best.safetensors"


def _kl_to(teacher_model, student, loader) -> float:
    from cnncli.train.distill import distillation_kl

    student.eval()
    with torch.no_grad():
        total = [distillation_kl(student(b.images), teacher_model(b.images), 1.0).item() for b in loader]
    return sum(total) / len(total)


def test_distillation_moves_the_student_toward_the_teacher(digits, teacher, tmp_path):
    """With --distill-weight 1 the loss is the KL term alone: the student's KL to the teacher on the validation
    images falls; the teacher ran once per training image over 4 epochs (its logits kept: no augmentation)."""
    from cnncli.models.checkpoint import load_model

    teacher_model, _ = load_model(teacher)
    run = TrainingRun.prepare(config(digits, tmp_path / "s", epochs=4, optimizer="adamw", lr=3e-3, teacher=str(teacher),
                                     distill_weight=1.0, distill_temperature=1.0, seed=1))
    before = _kl_to(teacher_model, run.model, run.val_loader)
    run.fit()
    after = _kl_to(teacher_model, run.model, run.val_loader)
    assert after < before / 3, (before, after)
    assert run.step.criterion.teacher_images == len(run.train_ds)


def test_a_teacher_with_other_classes_is_refused(digits, tmp_path):
    other = write_textures(tmp_path / "textures", per_class=4)
    TrainingRun.prepare(config(other, tmp_path / "t", grayscale=False)).fit()
    with pytest.raises(UsageError) as err:
        TrainingRun.prepare(config(digits, tmp_path / "s", teacher=str(tmp_path / "t" / "best.safetensors")))
    message = str(err.value)
    assert "predicts 3 classes" in message and "10" in message and message.count(". ") == 0
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- the head phase and the recipe line


def test_head_phase_trains_the_head_alone_on_cached_features_then_the_run_goes_on(digits, teacher, tmp_path):
    """--head-epochs 5 from a trained LeNet-5 whose head is reset: the head's weights move and the backbone's do
    not; the probe beats chance on the held-out digits by far; the run's optimiser starts afresh; the first line
    says the recipe and the log reports the phase before epoch 1."""
    from types import SimpleNamespace

    from cnncli.models.registry import head_name
    from cnncli.train.head_phase import train_head_first

    cfg = config(digits, tmp_path / "a", command="finetune", arch=None, weights=str(teacher), head_epochs=5,
                 optimizer="adamw", lr=1e-2)
    run = TrainingRun.prepare(cfg)
    try:
        run.model.get_submodule(head_name(run.model)).reset_parameters()
        head = set(run.final_plan.head)
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        phase = train_head_first(run, SimpleNamespace(stop=False))
        moved = {n for n, p in run.model.named_parameters() if not torch.equal(p, before[n])}
        assert moved == head
        assert phase.epochs == 5 and phase.val_acc > 0.4, phase  # 10 classes: chance is 0.1
        assert not run.step.optimizer.state
    finally:
        run.abandon()
    said: list[str] = []
    run = TrainingRun.prepare(replace_cfg(cfg, out=str(tmp_path / "b"), quiet=False), log=said.append)
    run.fit()
    first = next(i for i, line in enumerate(said) if "recipe: " in line)
    assert "recipe: 5 head epochs on cached features, then 1 epochs of all, adamw lr 0.01" in said[first]
    phase_line = next(i for i, line in enumerate(said) if line.startswith("head phase: 5 epochs"))
    assert first < phase_line < next(i for i, line in enumerate(said) if line.startswith("epoch 1/1"))


def replace_cfg(cfg: TrainConfig, **changes) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def test_lr_takes_a_number_or_auto_and_the_teacher_refusal_exits_2(digits, tmp_path, run_cli):
    result = run_cli("train", digits, "--arch", "lenet5", "--lr", "fast")
    assert result.code == 2 and "--lr: must be a number > 0 or auto, not 'fast'" in result.err
    assert len(result.err.strip().splitlines()) == 1
    other = write_digits(tmp_path / "two", per_class=4, classes=2)
    TrainingRun.prepare(config(other, tmp_path / "t")).fit()
    result = run_cli("train", digits, "--arch", "lenet5", "--grayscale", "--teacher", tmp_path / "t" /
                     "best.safetensors", "-o", tmp_path / "s", "-q")
    assert result.code == 2 and "predicts 2 classes" in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_augment_auto_is_the_photo_recipe_for_presumed_photos_and_light_otherwise():
    from cnncli.models.registry import default_preprocessing
    from cnncli.train.augment import plan_augmentation

    photos = plan_augmentation("auto", None, "finetune", "default", 3)
    assert (photos.preset, photos.flip, photos.auto) == ("standard", True, True)
    assert photos.describe(default_preprocessing("efficientnet_lite0")).startswith("augment auto -> standard")
    for args in (("train", "none", 3), ("finetune", "default", 1), ("finetune", "runs/x/best.safetensors", 3)):
        plan = plan_augmentation("auto", None, *args)
        assert (plan.preset, plan.flip) == ("light", False), args


def test_finetune_defaults_are_the_measured_recipe_and_train_keeps_its_own():
    """The recipe of benchmarks/README.md (issue 20) is what `cnncli finetune` runs with no options; `train` keeps
    its plain defaults (no EMA, no warm-up, one rate)."""
    from typer.main import get_command

    from cnncli.cli.app import app

    commands = get_command(app).commands
    finetune = {p.name: p.default for p in commands["finetune"].params}
    train = {p.name: p.default for p in commands["train"].params}
    assert (finetune["head_epochs"], finetune["epochs"], finetune["trainable"]) == (10, 6, "all")
    assert (finetune["ema"], finetune["warmup_epochs"], finetune["backbone_lr_mult"]) == (True, 1.0, 1.0)
    assert (finetune["label_smoothing"], finetune["augment"], finetune["weight_decay"]) == (0.1, "auto", 0.05)
    assert train["weight_decay"] == 1e-4
    assert (train["ema"], train["warmup_epochs"], train["backbone_lr_mult"], train["head_epochs"]) == (False, 0.0,
                                                                                                         1.0, 0)
    assert train["augment"] == "light" and train["label_smoothing"] == 0.0


def test_grey_images_saved_as_rgb_are_not_presumed_photos(tmp_path, photos):
    """Digits, scans and documents are often stored as RGB: auto then picks light and no flip, and says why;
    colour photos keep the photo recipe; a JPEG of a grey image (chroma noise) still counts as grey."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from cnncli.data.layout import Sample
    from cnncli.models.registry import default_preprocessing
    from cnncli.train.augment import looks_greyscale, plan_augmentation

    grey = write_digits(tmp_path / "digits", per_class=3)
    rgb_grey = []
    for i, path in enumerate(sorted(grey.rglob("*.png"))):
        out = tmp_path / "rgb" / f"{i}.png"
        out.parent.mkdir(exist_ok=True)
        Image.open(path).convert("RGB").save(out)
        rgb_grey.append(out)
    Image.open(photos["coffee"]).convert("L").convert("RGB").save(tmp_path / "rgb" / "scan.jpg", quality=75)
    rgb_grey.append(tmp_path / "rgb" / "scan.jpg")
    colour = tmp_path / "photo.png"
    Image.open(photos["chelsea"]).convert("RGB").save(colour)
    assert looks_greyscale(rgb_grey) and not looks_greyscale(rgb_grey + [colour]) and not looks_greyscale([])
    pixels = np.asarray(Image.open(colour))
    assert pixels.std(axis=2).mean() > 5  # the photo really has colour

    plan = plan_augmentation("auto", None, "finetune", "default", 3, greyscale=True)
    assert (plan.preset, plan.flip) == ("light", False)
    assert "have no colour" in plan.describe(default_preprocessing("efficientnet_lite0"))
    assert plan_augmentation("auto", True, "finetune", "default", 3, greyscale=True).flip  # --flip still wins

    def greyscale_data(paths, **cfg):
        run = SimpleNamespace(cfg=SimpleNamespace(**({"command": "finetune", "weights": "default",
                                                      "augment": "auto", "flip": None} | cfg)),
                              splits=SimpleNamespace(stream=None, train=[Sample(p, 0) for p in paths]))
        return TrainingRun._greyscale_data(run, 3)

    assert greyscale_data(rgb_grey) and not greyscale_data(rgb_grey + [colour] * 20)
    assert not greyscale_data(rgb_grey, command="train")  # train never presumes photos: nothing to look at
    assert not greyscale_data(rgb_grey, augment="standard", flip=False)  # both chosen by the user


def test_random_resized_crops_train_smaller_than_the_model_evaluates():
    """torchvision's recipe (FixRes): under random-resized crops a 224 model trains at 176 px and evaluates at 224,
    and the run's first line says so; light (digits, grey images) resizes progressively (its last third of the
    epochs at the eval size); --train-size sets every epoch's size; small models keep theirs; --augment none has
    nothing to resize."""
    from PIL import Image
    from skimage import data

    from cnncli.models.registry import default_preprocessing
    from cnncli.train.augment import epoch_train_size, plan_augmentation, train_transform, training_size

    pre = default_preprocessing("efficientnet_lite0")
    image = Image.fromarray(data.astronaut())
    photos = plan_augmentation("auto", None, "finetune", "default", 3, eval_size=pre.input_size)
    assert (photos.preset, photos.train_size) == ("standard", (176, 176))
    assert "trains at 176 px, evaluates at 224 (crops train smaller" in photos.describe(pre)
    assert tuple(train_transform(pre, photos)(image).shape) == (3, 176, 176)

    grey = plan_augmentation("auto", None, "finetune", "default", 3, greyscale=True, eval_size=pre.input_size)
    assert (grey.preset, grey.train_size, grey.progressive) == ("light", (176, 176), True)
    assert "trains at 176 px for 4 of 6 epochs, then at 224 (progressive resizing)" in grey.describe(pre, 6)
    assert "trains at" not in grey.describe(pre, 1)  # one epoch: at the eval size
    assert [epoch_train_size(grey, pre.input_size, e, 6)[0] for e in range(1, 7)] == [176] * 4 + [224] * 2
    assert [epoch_train_size(grey, pre.input_size, e, 10)[0] for e in range(1, 11)] == [176] * 7 + [224] * 3
    assert epoch_train_size(grey, pre.input_size, 1, 1) == (224, 224)
    assert tuple(train_transform(pre, grey, (176, 176))(image).shape) == (3, 176, 176)
    assert tuple(train_transform(pre, grey, (224, 224))(image).shape) == (3, 224, 224)
    assert epoch_train_size(photos, pre.input_size, 6, 6) == (176, 176)  # crops: every epoch (FixRes)

    asked = plan_augmentation("light", None, "train", "none", 3, eval_size=pre.input_size, train_size=160)
    assert asked.train_size == (160, 160) and "trains at 160 px, evaluates at 224 (--train-size)" in asked.describe(pre)
    assert tuple(train_transform(pre, asked)(image).shape) == (3, 160, 160)

    assert not asked.progressive and epoch_train_size(asked, pre.input_size, 6, 6) == (160, 160)
    assert training_size("standard", (64, 64)) == (64, 64)  # below the floor: the eval size
    assert training_size("strong", (160, 160)) == (128, 128)
    assert training_size("standard", (256, 192)) == (200, 152)  # each side, to 8 px
    assert training_size("none", (224, 224), 160) == (224, 224)


def test_train_size_reaches_the_batches_and_the_record_and_is_refused_without_augmentation(tmp_path, run_cli):
    """The training batches have the --train-size shape while validation keeps the model's size, the card and
    args.json record it, and --train-size with --augment none is refused in one sentence before any run folder
    exists."""
    textures = write_textures(tmp_path / "tex", per_class=6, crop=48)
    run = TrainingRun.prepare(config(textures, tmp_path / "r", arch="simplecnn", grayscale=False, image_size=48,
                                     augment="light", train_size=40))
    try:
        images = next(iter(run.train_loader)).images
        val_images = next(iter(run.val_loader)).images
        assert tuple(images.shape[1:]) == (3, 40, 40) and tuple(val_images.shape[1:]) == (3, 48, 48)
        run.fit()
    finally:
        run.abandon()
    from cnncli.models.checkpoint import read_card

    card = read_card(tmp_path / "r" / "best.safetensors")
    assert card.training["train_size"] == [40, 40] and list(card.preprocessing.input_size) == [48, 48]
    assert card.training["train_size_epochs"] == 1
    assert json.loads((tmp_path / "r" / "args.json").read_text())["train_size"] == 40

    result = run_cli("train", textures, "--arch", "simplecnn", "--augment", "none", "--train-size", "40",
                     "-o", tmp_path / "none")
    assert result.code == 2 and "--train-size resizes the augmented training images" in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "none").exists()


def test_progressive_resizing_changes_the_batches_at_the_last_third_of_the_epochs(tmp_path, monkeypatch):
    """light at a 128-px model: epochs 1-2 of 3 train on 104-px images, epoch 3 at 128, validation at 128 in
    every epoch; the card records the size and its epochs."""
    import cnncli.train.run as run_module
    from cnncli.models.checkpoint import read_card

    seen, original = [], run_module._train_epoch

    def recording(step, epoch, flag):
        seen.append((epoch, tuple(next(iter(step.loader)).images.shape[2:])))
        return original(step, epoch, flag)

    monkeypatch.setattr(run_module, "_train_epoch", recording)
    textures = write_textures(tmp_path / "tex", per_class=4, crop=48)
    run = TrainingRun.prepare(config(textures, tmp_path / "r", arch="simplecnn", grayscale=False, image_size=128,
                                     augment="light", epochs=3))
    try:
        run.fit()
        val_images = next(iter(run.val_loader)).images
    finally:
        run.release()
    assert seen == [(1, (104, 104)), (2, (104, 104)), (3, (128, 128))]
    assert tuple(val_images.shape[2:]) == (128, 128)
    training = read_card(tmp_path / "r" / "last.safetensors").training
    assert (training["train_size"], training["train_size_epochs"]) == ([104, 104], 2)
