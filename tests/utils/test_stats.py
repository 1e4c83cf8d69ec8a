"""The experiments' decision rule: the tests it runs agree with scipy's, its rate of false differences on simulated
studies without any real difference stays at 5% or below (the range-overlap rule it replaces does not), and a
planted difference is found."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tests.helpers.null_studies import (
    MONTE_CARLO,
    SCORE_DISTRIBUTIONS,
    TRIALS,
    bonferroni_rule,
    false_difference_rate,
    pairs_plan,
    range_overlap_rule,
)
from utils.stats import ALPHA, NO_DIFFERENCE, Comparison, compare, decide_shown, interval, p_value, t_statistics

PLANS = {
    "2 variants, 1 metric": pairs_plan(["a", "b"], ["score"]),
    "2 variants, 1 metric, paired": pairs_plan(["a", "b"], ["score"], paired=True),
    "3 variants, 1 metric": pairs_plan(["a", "b", "c"], ["score"]),
    "3 variants, 3 metrics": pairs_plan(["a", "b", "c"], ["x", "y", "z"]),
    "4 against a baseline, paired": [Comparison("base", v, "score", True) for v in "abcd"],
}


@pytest.mark.parametrize("plan_name", sorted(PLANS))
@pytest.mark.parametrize("distribution", sorted(SCORE_DISTRIBUTIONS))
@pytest.mark.parametrize("seeds", [3, 5])
def test_false_difference_rate_is_at_most_five_percent(plan_name, distribution, seeds):
    rng = np.random.default_rng(seeds)
    rate = false_difference_rate(bonferroni_rule, PLANS[plan_name], seeds, SCORE_DISTRIBUTIONS[distribution](rng))
    assert rate <= ALPHA + MONTE_CARLO, f"{rate:.4f} of studies without a difference reported one"


@pytest.mark.parametrize(
    "plan_name, seeds, expected",
    [
        ("2 variants, 1 metric", 2, 1 / 3),  # bilingual, and each doubling step of scaling, before
        ("3 variants, 1 metric", 2, 1 / 5),  # packing, per metric, before
        ("2 variants, 1 metric", 3, 1 / 10),  # a third seed is not enough
        ("3 variants, 3 metrics", 2, 1 - (4 / 5) ** 3),
    ],
)
def test_the_range_overlap_rule_fails_the_same_simulation(plan_name, seeds, expected):
    """The harness can fail: the rule the experiments used before (seeds' ranges do not overlap) reports a
    difference in a third of 2-seed studies without one. With exchangeable seeds its exact rate is the chance that
    one variant holds the n lowest scores: 2 / C(2n, n) for two variants, 3 / C(6, 2) = 1/5 for three with 2 seeds."""
    rng = np.random.default_rng(0)
    rate = false_difference_rate(range_overlap_rule, PLANS[plan_name], seeds, SCORE_DISTRIBUTIONS["normal"](rng))
    assert rate > ALPHA + MONTE_CARLO
    assert rate == pytest.approx(expected, abs=3 * math.sqrt(expected * (1 - expected) / TRIALS))


def test_three_seeds_are_too_few_for_a_paired_test_on_a_share_of_few_items():
    """Why the full size runs 4 seeds: with 3, a paired t-test on shares of 12 items (a preference accuracy) sees
    three nearly equal differences often enough to exceed 5% in a family of 6 comparisons; with 4 it does not."""
    plan = [Comparison(a, b, metric, True) for metric in "xyz" for a, b in (("e1", "e2"), ("e2", "e3"))]
    rates = {}
    for seeds in (3, 4):
        rng = np.random.default_rng(seeds)
        rates[seeds] = false_difference_rate(bonferroni_rule, plan, seeds, SCORE_DISTRIBUTIONS["share of 12"](rng))
    assert rates[3] > ALPHA + MONTE_CARLO and rates[4] <= ALPHA + MONTE_CARLO


@pytest.mark.parametrize(
    "paired, seeds, family_size, shift, power",
    [
        (False, 3, 1, 4.0, 0.87),  # Welch, one comparison: 4 seed standard deviations, found 89% of the time
        (False, 3, 4, 6.0, 0.80),  # four comparisons, each at 1.25%: a larger shift for that power (82%)
        (False, 5, 9, 4.0, 0.93),  # more seeds find smaller differences (95%)
        (True, 3, 4, 8.0, 0.68),  # paired with 3 seeds: 2 degrees of freedom, the weakest case (70%)
        (True, 5, 4, 4.0, 0.88),  # (90%)
    ],
)
def test_a_planted_difference_is_found(paired, seeds, family_size, shift, power):
    """One comparison of a family of ``family_size`` has a real difference of ``shift`` seed standard deviations;
    it is reported, in the right direction, at least ``power`` of the time (the rates were measured once with
    20,000 trials and are asserted a little below)."""
    rng = np.random.default_rng(7)
    baseline = rng.normal(size=(TRIALS, seeds))
    variant = rng.normal(size=(TRIALS, seeds)) - shift
    difference, se, df = t_statistics(baseline, variant, paired)
    found = decide_shown(p_value(difference, se, df), family_size)
    assert found.mean() >= power
    assert (difference[found] < 0).all()  # never the wrong direction
    low, high = interval(difference, se, df, 1 - ALPHA / family_size)
    assert np.array_equal(found, high < 0)  # reported exactly when the interval excludes 0


def test_welch_and_paired_agree_with_scipy():
    a, b = [4.1, 4.3, 3.9, 4.4], [3.6, 3.9, 3.5]
    difference, se, df = t_statistics(a, b, paired=False)
    ref = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert float(p_value(difference, se, df)) == pytest.approx(ref.pvalue, rel=1e-9)
    assert float(difference / se) == pytest.approx(ref.statistic, rel=1e-9) and float(df) == pytest.approx(ref.df)
    ci = ref.confidence_interval(0.95)
    assert [float(x) for x in interval(difference, se, df, 0.95)] == pytest.approx([ci.low, ci.high], rel=1e-9)
    a, b = [0.25, 0.5, 0.25], [0.5, 0.75, 0.33]
    difference, se, df = t_statistics(a, b, paired=True)
    ref = scipy_stats.ttest_rel(b, a)
    assert float(p_value(difference, se, df)) == pytest.approx(ref.pvalue, rel=1e-9) and float(df) == 2


def test_compare_reports_a_family_with_bonferroni_intervals():
    plan = [Comparison("isolated", "cross", "ppl"), Comparison("isolated", "cross", "rep")]
    scores = {
        "ppl": {"isolated": [7.30, 7.32, 7.31], "cross": [7.50, 7.52, 7.49]},
        "rep": {"isolated": [0.5, 0.6, 0.4], "cross": [0.55, 0.45, 0.6]},
    }
    ppl, rep = compare(plan, scores)
    assert ppl.family_size == 2 and ppl.confidence == pytest.approx(0.975) and ppl.comparison.test == "Welch's t"
    assert ppl.difference == pytest.approx(0.1933, abs=1e-4) and ppl.shown and ppl.verdict == "higher"
    assert ppl.low > 0 and ppl.adjusted_p == pytest.approx(2 * ppl.p)
    assert rep.verdict == NO_DIFFERENCE and rep.low < 0 < rep.high and rep.adjusted_p == 1.0  # 2p > 1


def test_seeds_without_spread_are_never_a_difference():
    """Three seeds with the very same accuracy on both sides: an equal mean is p = 1; an unequal one cannot be
    tested (no spread to compare it with) and is not reported. One seed cannot be tested either."""
    plan = [Comparison("a", "b", "acc", True), Comparison("a", "c", "acc", True), Comparison("a", "d", "acc")]
    scores = {"acc": {"a": [0.25] * 3, "b": [0.25] * 3, "c": [1 / 3] * 3, "d": [0.5] * 3}}
    same, unequal, welch = compare(plan, scores)
    assert same.p == 1.0 and not same.shown and same.verdict == NO_DIFFERENCE
    assert math.isnan(unequal.p) and math.isnan(unequal.adjusted_p) and unequal.verdict == NO_DIFFERENCE
    assert math.isnan(welch.p) and not welch.shown
    (single,) = compare([Comparison("a", "b", "acc")], {"acc": {"a": [1.0], "b": [2.0]}})
    assert math.isnan(single.p) and single.verdict == NO_DIFFERENCE
    with pytest.raises(ValueError, match="paired test needs one baseline score per variant score"):
        compare([Comparison("a", "b", "acc", True)], {"acc": {"a": [1.0, 2.0], "b": [1.0]}})
