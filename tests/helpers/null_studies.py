"""Simulated studies in which no variant differs from another, to measure a decision rule's rate of false
differences (tests/utils/test_stats.py, tests/stages/test_experiments.py)."""

from __future__ import annotations

import math

import numpy as np

from utils.stats import ALPHA, Comparison, decide

TRIALS = 20_000
# A rate measured on TRIALS simulated studies is within this of the true rate 997 times in 1000 (3 standard
# errors of a binomial share at 5%): "at most 5%" is asserted as "no more than 5% plus this Monte Carlo error".
MONTE_CARLO = 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)


def false_difference_rate(rule, plan: list[Comparison], seeds: int, draw, trials: int = TRIALS) -> float:
    """The share of simulated studies where ``rule`` reports any difference, every score drawn by ``draw`` from
    the same distribution (no variant differs from another). ``rule(plan, scores)`` -> bool per trial."""
    variants = {name for c in plan for name in (c.baseline, c.variant)}
    metrics = {c.metric for c in plan}
    scores = {m: {v: draw((trials, seeds)) for v in sorted(variants)} for m in sorted(metrics)}
    return float(rule(plan, scores).mean())


def bonferroni_rule(plan: list[Comparison], scores: dict) -> np.ndarray:
    """utils.stats' rule on many simulated studies at once: does any comparison show a difference?"""
    return np.any([d["shown"] for d in decide(plan, scores)], axis=0)


def range_overlap_rule(plan: list[Comparison], scores: dict) -> np.ndarray:
    """The rule the experiments used before: the best variant's seeds' range clears every other variant's range."""
    found = np.zeros(next(iter(next(iter(scores.values())).values())).shape[:-1], dtype=bool)
    for metric in {c.metric for c in plan}:
        groups = scores[metric]
        means = np.stack([g.mean(-1) for g in groups.values()])
        best = means.argmin(0)
        lows = np.stack([g.min(-1) for g in groups.values()])
        highs = np.stack([g.max(-1) for g in groups.values()])
        trial = np.arange(best.size)
        clear = np.ones(best.size, dtype=bool)
        for other in range(len(groups)):
            clear &= (best == other) | (lows[other] > highs[best, trial])
        found |= clear
    return found


def pairs_plan(variants: list[str], metrics: list[str], paired: bool = False) -> list[Comparison]:
    """Every pair of variants on every metric."""
    return [Comparison(a, b, m, paired) for m in metrics for i, a in enumerate(variants) for b in variants[i + 1 :]]


SCORE_DISTRIBUTIONS = {
    "normal": lambda rng: lambda shape: rng.normal(size=shape),
    # Skewed, like perplexities: a few seeds land far above the rest.
    "lognormal": lambda rng: lambda shape: rng.lognormal(sigma=1.0, size=shape),
    # Discrete, like a preference accuracy on 12 held-back pairs or a share of 8 answers that end.
    "share of 12": lambda rng: lambda shape: rng.binomial(12, 0.3, size=shape) / 12,
    "share of 8": lambda rng: lambda shape: rng.binomial(8, 0.8, size=shape) / 8,
}
