"""The int8 / bf16 figures (issue 15 item 4) on constructed inputs: accuracy within 1 point on labels, >= 99%
agreement where fp32 leads by >= 0.10 (near-ties do not count), >= 1.5x throughput. New in issue 15: the old
main judged int8 by agreement over all images."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.export.judge import DECISIVE_LEAD, judge_precision


def probs_with_lead(top: int, lead: float, classes: int = 4) -> np.ndarray:
    """One probability row whose top class is ``top`` and leads the next by ``lead``."""
    rest = (1.0 - lead) / classes
    row = np.full(classes, rest * (1 - 0.5 / classes))
    row[(top + 1) % classes] = rest
    row[top] = rest + lead
    return row / row.sum()


def test_near_ties_do_not_count_against_agreement():
    fp32 = np.stack([probs_with_lead(0, 0.5)] * 99 + [probs_with_lead(1, 0.02)])
    low = fp32.copy()
    low[-1] = probs_with_lead(2, 0.02)  # the near-tie flips
    figures = judge_precision(fp32, low)
    assert figures.decisive_images == 99 and figures.decisive_agreement == 1.0 and figures.agreement == 0.99
    assert figures.agreement_ok and figures.passed


def test_a_decisive_flip_in_a_hundred_fails_b():
    fp32 = np.stack([probs_with_lead(0, 0.5)] * 50 + [probs_with_lead(0, DECISIVE_LEAD + 0.01)] * 50)
    low = fp32.copy()
    low[-1] = probs_with_lead(3, 0.3)
    figures = judge_precision(fp32, low)
    assert figures.decisive_images == 100 and figures.decisive_agreement == pytest.approx(0.99)
    assert figures.agreement_ok  # 99% is enough
    low[-2] = probs_with_lead(3, 0.3)
    assert judge_precision(fp32, low).agreement_ok is False


def test_accuracy_within_one_point_on_labels():
    labels = np.zeros(200, dtype=int)
    fp32 = np.stack([probs_with_lead(0, 0.4)] * 180 + [probs_with_lead(1, 0.4)] * 20)  # 90% correct
    low = fp32.copy()
    low[:2] = probs_with_lead(2, 0.4)  # two right answers lost: -1.0 point, allowed
    figures = judge_precision(fp32, low, labels)
    assert figures.fp32_accuracy == 0.9 and figures.accuracy == pytest.approx(0.89)
    assert figures.accuracy_drop == pytest.approx(0.01) and figures.accuracy_ok
    low[2] = probs_with_lead(2, 0.4)  # a third: -1.5 points
    assert judge_precision(fp32, low, labels).accuracy_ok is False
    gains = fp32.copy()
    gains[180:] = probs_with_lead(0, 0.4)  # better than fp32 is fine for (a) though (b) sees the changes
    figures = judge_precision(fp32, gains, labels)
    assert figures.accuracy_ok and figures.agreement_ok is False


def test_speedup_and_missing_figures():
    fp32 = np.stack([probs_with_lead(0, 0.5)] * 3)
    figures = judge_precision(fp32, fp32, fp32_throughput=100.0, throughput=149.0)
    assert figures.speedup == pytest.approx(1.49) and figures.speed_ok is False and not figures.passed
    assert judge_precision(fp32, fp32, fp32_throughput=100.0, throughput=150.0).speed_ok
    bare = judge_precision(fp32, fp32)
    assert bare.accuracy_ok is None and bare.speed_ok is None and bare.passed
    text = "\n".join(judge_precision(fp32, fp32, np.zeros(3, int)).lines("val"))
    assert "(a) top-1 accuracy on val" in text and "(b)" in text
    with pytest.raises(ValueError):
        judge_precision(fp32, fp32[:2])
