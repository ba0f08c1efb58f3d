"""The paired statistics the paper-claims benchmark reads its verdicts from."""

import math

import pytest

from illume_eval.metrics import paired_difference, t95


def test_t_quantiles_match_the_tables_and_never_run_narrow():
    assert t95(2) == pytest.approx(4.303)
    assert t95(11) == t95(10)  # between rows: the wider entry
    assert t95(1000) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError, match="at least 1"):
        t95(0)


def test_a_paired_difference_is_reproduced_only_when_its_interval_clears_zero():
    # three seeds, arm above control by 0.10 +- 0.01: t(2) 4.303 * 0.01 / sqrt(3) = 0.025
    clear = paired_difference([0.61, 0.50, 0.40], [0.50, 0.40, 0.31])
    assert clear.mean == pytest.approx(0.10)
    assert clear.sd == pytest.approx(0.01)
    assert clear.high - clear.mean == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    assert clear.verdict == "reproduced"

    worse = paired_difference([0.40, 0.30, 0.21], [0.50, 0.40, 0.30])
    assert worse.verdict == "not reproduced"


def test_a_noisy_difference_is_inconclusive_and_says_what_would_settle_it():
    noisy = paired_difference([0.60, 0.40, 0.55], [0.50, 0.45, 0.45])  # diffs +0.10, -0.05, +0.10
    assert noisy.low < 0 < noisy.high
    assert noisy.verdict == "inconclusive"
    k = noisy.units_to_settle
    assert k is not None and k > 3
    assert (
        t95(k - 1) * noisy.sd / math.sqrt(k)
        < noisy.mean
        <= t95(k - 2) * noisy.sd / math.sqrt(k - 1)
    )
    assert "inconclusive, about" in noisy.describe()


def test_a_claim_of_no_harm_is_tested_against_its_margin():
    # diffs -0.05, -0.04, -0.06 (half-width 0.025): surely lower, and surely by less than 0.10
    cost = paired_difference([0.45, 0.46, 0.44], [0.50, 0.50, 0.50], margin=0.10)
    assert cost.verdict == "reproduced" and "against -0.10" in cost.describe()
    assert paired_difference([0.45, 0.46, 0.44], [0.50, 0.50, 0.50]).verdict == "not reproduced"
    harm = paired_difference([0.35, 0.36, 0.34], [0.50, 0.50, 0.50], margin=0.10)
    assert harm.verdict == "not reproduced"


def test_one_seed_is_refused():
    with pytest.raises(ValueError, match="two or more"):
        paired_difference([0.5], [0.4])
