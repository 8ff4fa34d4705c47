"""Multi-label metrics and threshold tuning checked against scikit-learn on fixed probabilities, and the
iterative stratification's per-class shares."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, precision_score, recall_score

from cnncli.data.multilabel import iterative_stratification
from cnncli.evaluate.multilabel import average_precision, compute_multilabel_metrics, tune_thresholds


def fixed_case(seed: int = 3, n: int = 200, c: int = 7):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < rng.uniform(0.1, 0.6, c)).astype(int)
    targets[0] = 1  # every class has a positive
    noise = rng.normal(0, 0.8, (n, c))
    probs = 1 / (1 + np.exp(-(2.0 * (targets - 0.5) * 2 + noise)))
    probs = np.round(probs, 2)  # ties, which AP must group as scikit-learn does
    return targets, probs


@pytest.mark.parametrize("seed", [0, 3])
def test_metrics_match_scikit_learn(seed):
    targets, probs = fixed_case(seed)
    thresholds = np.linspace(0.3, 0.7, targets.shape[1])
    result = compute_multilabel_metrics(probs, targets, [f"c{i}" for i in range(targets.shape[1])], thresholds)
    predicted = (probs >= thresholds).astype(int)
    assert result.mAP == pytest.approx(average_precision_score(targets, probs, average="macro"), abs=1e-12)
    for c in range(targets.shape[1]):
        s = result.per_class[f"c{c}"]
        assert s["ap"] == pytest.approx(average_precision_score(targets[:, c], probs[:, c]), abs=1e-12)
        assert s["f1"] == pytest.approx(f1_score(targets[:, c], predicted[:, c]), abs=1e-12)
        assert s["precision"] == pytest.approx(precision_score(targets[:, c], predicted[:, c]), abs=1e-12)
        assert s["recall"] == pytest.approx(recall_score(targets[:, c], predicted[:, c]), abs=1e-12)
    assert result.micro["f1"] == pytest.approx(f1_score(targets, predicted, average="micro"), abs=1e-12)
    assert result.macro["f1"] == pytest.approx(f1_score(targets, predicted, average="macro", zero_division=0),
                                               abs=1e-12)
    assert result.hamming_loss == pytest.approx(hamming_loss(targets, predicted), abs=1e-12)
    assert result.exact_match == pytest.approx(float((predicted == targets).all(axis=1).mean()))


def test_ap_of_a_class_without_positives_is_none_and_left_out_of_map():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.2], [0.1, 0.7], [0.8, 0.1]])
    assert average_precision(targets[:, 1], probs[:, 1]) is None
    assert compute_multilabel_metrics(probs, targets, ["a", "b"]).mAP == pytest.approx(1.0)


def test_tuned_thresholds_reach_the_best_f1_on_those_images():
    targets, probs = fixed_case(5)
    tuned = tune_thresholds(targets, probs)
    for c, t in enumerate(tuned):
        best = max(f1_score(targets[:, c], (probs[:, c] >= s).astype(int)) for s in np.unique(probs[:, c]))
        assert f1_score(targets[:, c], (probs[:, c] >= t).astype(int)) == pytest.approx(best)
        assert 0 < t < 1


STRATIFY_TOLERANCE = 0.03  # each class's val share within 3 points of --val-split


def test_iterative_stratification_keeps_each_class_share():
    rng = np.random.default_rng(0)
    n, c = 600, 12
    rates = np.geomspace(0.02, 0.6, c)  # rare and common classes
    y = (rng.random((n, c)) < rates).astype(int)
    is_val = iterative_stratification(y, 0.2, seed=1)
    assert abs(is_val.mean() - 0.2) < 0.01
    shares = y[is_val].sum(axis=0) / y.sum(axis=0)
    assert np.all(np.abs(shares - 0.2) <= STRATIFY_TOLERANCE), shares
    again = iterative_stratification(y, 0.2, seed=1)
    assert np.array_equal(is_val, again)
    # a random split of the same size misses the rare classes' share by far more
    random_val = rng.permutation(n) < is_val.sum()
    random_shares = y[random_val].sum(axis=0) / y.sum(axis=0)
    assert np.abs(random_shares - 0.2).max() > STRATIFY_TOLERANCE
