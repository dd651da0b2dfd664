"""Bootstrap intervals for gains (issue 17): they cover the truth, widen with noise, and see 0 in a null."""
from __future__ import annotations

import numpy as np

from downstream.report.intervals import correct, gain_interval


def test_a_clear_gain_excludes_zero_and_a_null_contains_it():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.3
    better = [base | (rng.random(400) < 0.2) for _ in range(3)]  # ~+14 points on the same images
    same = []  # 20 right answers turned wrong and 20 wrong ones right: the same accuracy
    for _ in range(3):
        run = base.copy()
        run[rng.choice(np.flatnonzero(base), 20, replace=False)] = False
        run[rng.choice(np.flatnonzero(~base), 20, replace=False)] = True
        same.append(run)
    up = gain_interval(better, [base])
    assert up["ci95"][0] > 0.05 and not up["contains_zero"] and up["ci95"][0] < up["mean"] < up["ci95"][1]
    null = gain_interval(same, [base])
    assert null["contains_zero"] and null["ci95"][1] - null["ci95"][0] < 0.1


def test_fewer_images_give_a_wider_interval_and_it_is_reproducible():
    rng = np.random.default_rng(1)
    base = rng.random(1000) < 0.3
    runs = [base | (rng.random(1000) < 0.05) for _ in range(3)]
    wide = gain_interval([r[:100] for r in runs], [base[:100]])
    narrow = gain_interval(runs, [base])
    assert wide["ci95"][1] - wide["ci95"][0] > 2 * (narrow["ci95"][1] - narrow["ci95"][0])
    assert gain_interval(runs, [base]) == narrow


def test_correct_reads_a_zeroshot_result():
    result = {"model": "m", "per_image": {"label": [0, 1, 2], "prediction": [0, 2, 2]}}
    assert correct(result).tolist() == [True, False, True]
