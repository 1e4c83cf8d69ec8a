"""Repetition and composition measures of a document, as web-corpus pipelines filter on them (Gopher, RefinedWeb).

Gopher (Rae et al. 2021, table A1) removes a document when too much of it sits in duplicated lines, in its single
most frequent 2-, 3- or 4-gram, or in 5- to 10-grams that occur more than once. Those thresholds were set on
English words; here a Chinese character is a word (``tools.curate.words``), and a Chinese word is about two
characters, so a Chinese document's n-grams are ``chinese_ngram_scale`` times longer: measured on IndustryCorpus2's
high-quality Chinese files, word-sized 5-grams would flag one good document in ten, character 10-grams one in a
hundred.

Fractions are of the characters inside words (spaces and punctuation excluded), and an n-gram repeat counts the
words covered by every occurrence after the first, overlaps once (datatrove skips ahead instead; the two differ
only on overlapping repeats).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tools.curate.words import NgramHasher, Words


def duplicate_line_fraction(text: str) -> float:
    """Share of the characters (of non-empty lines) that are in a line which already appeared above."""
    seen: set[str] = set()
    total = duplicated = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            duplicated += len(line)
        else:
            seen.add(line)
    return duplicated / total if total else 0.0


@lru_cache(maxsize=8)
def _plan(top: tuple, duplicate: tuple) -> list[tuple[int, float | None, float | None, bool, float]]:
    """Per n-gram size, ascending: (n, top limit, duplicated limit, a top rule follows, smallest later
    duplicated limit)."""
    top_limits, duplicate_limits = dict(top), dict(duplicate)
    sizes = sorted(set(top_limits) | set(duplicate_limits))
    return [
        (
            n,
            top_limits.get(n),
            duplicate_limits.get(n),
            any(m in top_limits for m in sizes[i + 1 :]),
            min((duplicate_limits[m] for m in sizes[i + 1 :] if m in duplicate_limits), default=1.0),
        )
        for i, n in enumerate(sizes)
    ]


def check_repetition(words: Words, top_limits: dict[int, float], duplicate_limits: dict[int, float]):
    """The first repetition rule ``words`` breaks, as ``(rule, n, value)``, or None; and the measures at the
    smallest sizes, ``(top fraction, duplicated fraction)``, for the report's histograms.

    * top n-gram fraction: the largest share of characters one n-gram accounts for (occurrences x characters);
    * duplicated n-gram fraction: characters covered by repeats (occurrences after the first) of n-grams.

    An n-gram can repeat only where its (n-1)-gram does, so each size after the first sorts just those candidate
    positions, and once nothing repeats nothing longer does. Repeats of n-grams cover a subset of what repeats of
    (n-1)-grams cover, so once the duplicated fraction is under every larger size's limit, the larger sizes are not
    computed."""
    plan = _plan(tuple(top_limits.items()), tuple(duplicate_limits.items()))
    total, count = int(words.lengths.sum()), len(words)
    measures = [None, None]  # top and duplicated fractions at the smallest size of each rule
    if total == 0 or count < plan[0][0]:
        return None, (0.0, 0.0)
    hasher = NgramHasher(words.hashes)
    cumulative = np.concatenate(([0], np.cumsum(words.lengths)))
    candidates = np.arange(count)
    for n, top_limit, duplicate_limit, top_follows, later_duplicate_limit in plan:
        if count < n:
            break
        longest_once = int((cumulative[n:] - cumulative[:-n]).max()) if top_limit is not None else 0
        repeats = candidates[:0]
        if candidates.size:
            positions = candidates[candidates <= count - n]
            values = hasher.at(positions, n)
            order = np.argsort(values, kind="stable")  # stable: the first occurrence of a value comes first
            ordered = values[order]
            same = ordered[1:] == ordered[:-1]
            repeats = positions[order[1:][same]]
        if top_limit is not None:
            longest = longest_once  # an n-gram occurring once may account for the most characters
            if repeats.size:
                run_starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
                runs = np.diff(np.append(run_starts, ordered.size))
                first_at = positions[order[run_starts]]
                longest = max(longest, int((runs * (cumulative[first_at + n] - cumulative[first_at])).max()))
            value = longest / total
            measures[0] = value if measures[0] is None else measures[0]
            if value > top_limit:
                return ("top", n, value), (measures[0], measures[1] or 0.0)
        if duplicate_limit is not None:
            value = 0.0
            if repeats.size:
                cover = np.zeros(count + 1, dtype=np.int64)
                cover[repeats] += 1  # positions are distinct, so fancy indexing adds once each
                cover[repeats + n] -= 1
                value = float(words.lengths[np.cumsum(cover[:-1]) > 0].sum() / total)
            measures[1] = value if measures[1] is None else measures[1]
            if value > duplicate_limit:
                return ("duplicated", n, value), (measures[0] or 0.0, measures[1])
            if not top_follows and value <= later_duplicate_limit:
                break
        if repeats.size == 0:
            if not top_follows:
                break
            candidates = repeats  # nothing repeats at this size, so nothing longer does
        else:
            in_repeat = np.zeros(count, dtype=bool)
            in_repeat[repeats] = True
            in_repeat[positions[order[:-1][same]]] = True
            candidates = np.flatnonzero(in_repeat)
    return None, (measures[0] or 0.0, measures[1] or 0.0)
