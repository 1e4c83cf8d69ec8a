"""Is a difference between two training recipes larger than seed-to-seed noise? The decision rule of the experiments.

Every variant of a study is trained with several seeds, and each seed gives one score per metric (a held-out
log-perplexity, a share of answers, a preference accuracy). Two variants are compared on those per-seed scores:

- **Welch's t-test** when the variants were trained independently (it lets the two variants differ in spread);
- **a paired t-test** when every seed gives both scores from one run (the epoch checkpoints of one SFT run; a DPO
  model and the SFT model it started from, scored on the same held-back pairs).

A study makes ``m`` comparisons, so it uses the **Bonferroni correction**: each comparison is tested at level
``alpha / m`` and its interval has confidence ``1 - alpha / m``. The chance that a study reports any difference
when its variants change nothing is then at most ``alpha`` (5%), whatever the dependence between the comparisons,
and a comparison is reported as a difference exactly when its interval excludes 0. When it does not, the answer is
"no difference shown": the runs cannot tell, which is not the same as "no difference".

The t-tests assume the per-seed scores are roughly normal. ``tests/utils/test_stats.py`` measures the rate of
false differences on simulated studies without any real difference (normal, skewed and discrete scores) and the
rate at which a planted difference is found. One case needs more seeds than the minimum of 3: a paired test on a
share of a few items (an accuracy on 12 held-back pairs) sees three nearly equal differences often enough to exceed
5% in a family of several comparisons; with 4 seeds it stays below.

Every function works along the last axis of numpy arrays, so those tests run this very rule on 20,000 simulated
studies at once; ``compare`` is the same rule on one study's lists of scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

ALPHA = 0.05  # the chance that a study reports a difference between variants that do not differ
NO_DIFFERENCE = "no difference shown"


@dataclass(frozen=True)
class Comparison:
    """One planned comparison of a study: ``variant`` against ``baseline`` on ``metric``."""

    baseline: str
    variant: str
    metric: str
    paired: bool = False

    @property
    def test(self) -> str:
        return "paired t" if self.paired else "Welch's t"


@dataclass(frozen=True)
class Result:
    """A comparison's outcome: the mean difference ``variant - baseline`` with its Bonferroni interval, the test's
    two-sided p-value before correction, and the number of comparisons in the study (``family_size``)."""

    comparison: Comparison
    baseline_scores: tuple[float, ...]
    variant_scores: tuple[float, ...]
    difference: float
    low: float
    high: float
    t: float
    df: float
    p: float
    family_size: int
    alpha: float = ALPHA

    @property
    def adjusted_p(self) -> float:
        """Bonferroni: ``p * m``, at most 1 (NaN when the test could not be made)."""
        return min(1.0, self.p * self.family_size) if not math.isnan(self.p) else math.nan

    @property
    def shown(self) -> bool:
        return bool(decide_shown(self.p, self.family_size, self.alpha))

    @property
    def confidence(self) -> float:
        return 1 - self.alpha / self.family_size

    @property
    def verdict(self) -> str:
        if not self.shown:
            return NO_DIFFERENCE
        return "higher" if self.difference > 0 else "lower"


def t_statistics(baseline, variant, paired: bool):
    """Mean difference ``variant - baseline``, its standard error and degrees of freedom, along the last axis.

    Paired: the mean and spread of the per-seed differences, ``n - 1`` degrees of freedom. Unpaired: Welch's
    standard error and the Welch-Satterthwaite degrees of freedom. Fewer than two seeds leave no spread (NaN)."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(variant, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if paired:
            if a.shape != b.shape:
                raise ValueError(f"a paired test needs one baseline score per variant score: {a.shape} vs {b.shape}")
            d = b - a
            n = d.shape[-1]
            se = np.sqrt(d.var(-1, ddof=1) / n) if n > 1 else np.full(d.shape[:-1], np.nan)
            return d.mean(-1), se, np.full(d.shape[:-1], n - 1.0)
        na, nb = a.shape[-1], b.shape[-1]
        va = a.var(-1, ddof=1) / na if na > 1 else np.full(a.shape[:-1], np.nan)
        vb = b.var(-1, ddof=1) / nb if nb > 1 else np.full(b.shape[:-1], np.nan)
        se2 = va + vb
        df = se2**2 / (va**2 / (na - 1) + vb**2 / (nb - 1)) if min(na, nb) > 1 else np.full(se2.shape, np.nan)
        # Seeds that agree exactly on both sides: no spread, so the degrees of freedom are those of the data.
        df = np.where(se2 == 0, na + nb - 2.0, df)
    return b.mean(-1) - a.mean(-1), np.sqrt(se2), df


def p_value(difference, se, df):
    """Two-sided p-value of ``difference / se`` on ``df`` degrees of freedom.

    Seeds that agree exactly leave no spread to measure noise against: an equal mean is no difference (p = 1),
    an unequal one cannot be tested (NaN, never reported as a difference). One seed cannot be tested either."""
    difference, se, df = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (difference, se, df)))
    p = np.full(difference.shape, np.nan)
    spread = se > 0
    p[spread] = 2 * student_t.sf(np.abs(difference[spread]) / se[spread], df[spread])
    p[(se == 0) & (difference == 0)] = 1.0
    return p


def interval(difference, se, df, confidence: float):
    """The two-sided ``confidence`` interval of the difference (``difference`` +- the t quantile times ``se``)."""
    with np.errstate(invalid="ignore"):
        half = student_t.ppf(0.5 + confidence / 2, df) * np.asarray(se, dtype=float)
    return difference - half, difference + half


def decide_shown(p, family_size: int, alpha: float = ALPHA):
    """Bonferroni: a difference is reported when ``p < alpha / family_size`` (a NaN p-value never is)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(p) < alpha / family_size


def decide(plan: list[Comparison], scores: dict, alpha: float = ALPHA) -> list[dict]:
    """The rule on every comparison of ``plan``: ``scores`` maps metric -> variant -> per-seed scores (the seeds in
    the same order for every variant, along the last axis; leading axes are independent studies). Returns, per
    comparison, arrays of the difference, its interval (``low``, ``high``), ``t``, ``df``, ``p`` and ``shown``."""
    decisions = []
    for c in plan:
        difference, se, df = t_statistics(scores[c.metric][c.baseline], scores[c.metric][c.variant], c.paired)
        low, high = interval(difference, se, df, 1 - alpha / len(plan))
        p = p_value(difference, se, df)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_value = np.where(se > 0, difference / se, np.nan)
        shown = decide_shown(p, len(plan), alpha)
        decisions.append(
            {"difference": difference, "low": low, "high": high, "t": t_value, "df": df, "p": p, "shown": shown}
        )
    return decisions


def compare(plan: list[Comparison], scores: dict[str, dict[str, list[float]]], alpha: float = ALPHA) -> list[Result]:
    """``decide`` on one study's lists of per-seed scores, as ``Result`` records; the family is the whole plan."""
    results = []
    for c, d in zip(plan, decide(plan, scores, alpha)):
        numbers = {k: float(d[k]) for k in ("difference", "low", "high", "t", "df", "p")}
        a, b = tuple(scores[c.metric][c.baseline]), tuple(scores[c.metric][c.variant])
        results.append(Result(c, a, b, **numbers, family_size=len(plan), alpha=alpha))
    return results
