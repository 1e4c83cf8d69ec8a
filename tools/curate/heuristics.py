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


def check_repetition(words: Words, top_limits: dict[int, float], duplicate_limits: dict[int, float]):
    """The first repetition rule ``words`` breaks, as ``(rule, n, value)``, or None; and the measures at the
    smallest sizes, ``(top fraction, duplicated fraction)``, for the report's histograms.

    * top n-gram fraction: the largest share of characters one n-gram accounts for (occurrences x characters);
    * duplicated n-gram fraction: characters covered by repeats (occurrences after the first) of n-grams.

    An n-gram can repeat only where its (n-1)-gram does, so each size after the first sorts just those candidate
    positions. Repeats of n-grams cover a subset of what repeats of (n-1)-grams cover, so once the duplicated
    fraction is under every larger size's limit, the larger sizes are not computed."""
    total = int(words.lengths.sum())
    sizes = sorted(set(top_limits) | set(duplicate_limits))
    first_top, first_duplicate = (
        (min(top_limits) if top_limits else None),
        (min(duplicate_limits) if duplicate_limits else None),
    )
    measures = {"top": 0.0, "duplicated": 0.0}
    if total == 0 or len(words) < sizes[0]:
        return None, (0.0, 0.0)
    hasher = NgramHasher(words.hashes)
    cumulative = np.concatenate(([0], np.cumsum(words.lengths)))
    candidates = np.arange(len(words))
    for index, n in enumerate(sizes):
        if len(words) < n:
            break
        positions = candidates[candidates <= len(words) - n]
        values = hasher.at(positions, n)
        order = np.argsort(values, kind="stable")  # stable: the first occurrence of a value comes first
        ordered = values[order]
        same = ordered[1:] == ordered[:-1]
        repeats = positions[order[1:][same]]
        if n in top_limits:
            longest = int((cumulative[n:] - cumulative[:-n]).max())  # an n-gram occurring once may be the top
            if repeats.size:
                run_starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
                runs = np.diff(np.append(run_starts, ordered.size))
                first_at = positions[order[run_starts]]
                longest = max(longest, int((runs * (cumulative[first_at + n] - cumulative[first_at])).max()))
            value = longest / total
            if n == first_top:
                measures["top"] = value
            if value > top_limits[n]:
                return ("top", n, value), (measures["top"], measures["duplicated"])
        if n in duplicate_limits:
            value = 0.0
            if repeats.size:
                cover = np.zeros(len(words) + 1, dtype=np.int64)
                cover[repeats] += 1  # positions are distinct, so fancy indexing adds once each
                cover[repeats + n] -= 1
                value = float(words.lengths[np.cumsum(cover[:-1]) > 0].sum() / total)
            if n == first_duplicate:
                measures["duplicated"] = value
            if value > duplicate_limits[n]:
                return ("duplicated", n, value), (measures["top"], measures["duplicated"])
            later = [duplicate_limits[m] for m in sizes[index + 1 :] if m in duplicate_limits]
            if not any(m in top_limits for m in sizes[index + 1 :]) and value <= min(later, default=1.0):
                break
        if repeats.size == 0 and not any(m in top_limits for m in sizes[index + 1 :]):
            break  # nothing repeats at this size, so nothing longer does
        in_repeat = np.zeros(len(words), dtype=bool)
        in_repeat[repeats] = True
        in_repeat[positions[order[:-1][same]]] = True
        candidates = np.flatnonzero(in_repeat) if repeats.size else np.arange(len(words))
    return None, (measures["top"], measures["duplicated"])
