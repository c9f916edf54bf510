"""Test-time scaling metrics, pure functions: the parallel axis (pass@k, maj@k and a verifier's best-of-k over
n samples per problem) and s1's control and scaling for the serial axis (budget forcing)."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from math import comb


def ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    return out + [n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the chance that k of the n samples, c of them correct, hold one
    correct sample: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(samples: list[tuple[str | None, bool]]) -> bool:
    """Majority vote over (extracted answer, correct) pairs: the most frequent extracted answer wins, ties
    going to the one seen first; no extracted answer never wins a vote. Correct if the winner is."""
    votes = Counter(a for a, _ in samples if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a, _ in samples if a is not None and votes[a] == top)
    return next(ok for a, ok in samples if a == winner)


def maj_at_k(samples: list[tuple[str | None, bool]], k: int, rng: random.Random, draws: int = 16) -> float:
    """maj@k for one problem: majority-vote accuracy over k of its n samples, averaged over every subset
    when there are few, else over `draws` random subsets (so maj@k does not depend on sample order)."""
    if k >= len(samples):
        return float(majority_correct(samples))
    return statistics.mean(majority_correct([samples[i] for i in s])
                           for s in _subsets(len(samples), k, rng, draws))


def _subsets(n: int, k: int, rng: random.Random, draws: int) -> list[list[int]]:
    """Every k-subset of n samples when there are few, else `draws` random ones."""
    if comb(n, k) <= draws:
        from itertools import combinations

        return [list(c) for c in combinations(range(n), k)]
    return [rng.sample(range(n), k) for _ in range(draws)]


def best_of_k(samples: list[tuple[float, bool]], k: int, rng: random.Random, draws: int = 16) -> float:
    """Best-of-k for one problem: over k of its n (verifier score, correct) samples, whether the one the
    verifier scores highest (the first of equal scores) is correct; averaged over subsets as maj_at_k is."""
    return statistics.mean(samples[max(s, key=lambda i: (samples[i][0], -i))][1]
                           for s in _subsets(len(samples), min(k, len(samples)), rng, draws))


def parallel_axis(per_problem: list[list[tuple[str | None, bool]]], tokens_per_sample: float,
                  seed: int = 0, scores: list[list[float]] | None = None) -> list[dict]:
    """pass@k and maj@k for k = 1, 2, 4, ... n, each with the generated tokens per problem it costs; with a
    verifier's `scores` (per problem, per sample), best-of-k too."""
    rng = random.Random(seed)
    n = min(len(s) for s in per_problem)
    rows = []
    for k in ks(n):
        row = {"k": k, "tokens_per_problem": k * tokens_per_sample,
               "pass_at_k": statistics.mean(pass_at_k(n, sum(ok for _, ok in s[:n]), k) for s in per_problem),
               "maj_at_k": statistics.mean(maj_at_k(s[:n], k, rng) for s in per_problem)}
        if scores is not None:
            row["best_of_k"] = statistics.mean(best_of_k([(sc, ok) for sc, (_, ok) in zip(v[:n], s[:n])], k, rng)
                                               for s, v in zip(per_problem, scores))
        rows.append(row)
    return rows


def s1_scaling(points: list[tuple[float, float]]) -> float | None:
    """s1's scaling metric: the mean slope of accuracy over thinking tokens across every pair of budgets
    (accuracy per 1,000 thinking tokens here, so the number is readable); None with fewer than 2 points."""
    pairs = [(a, b) for i, a in enumerate(points) for b in points[i + 1:] if b[0] != a[0]]
    if not pairs:
        return None
    return statistics.mean((b[1] - a[1]) / (b[0] - a[0]) * 1000 for a, b in pairs)
