"""Words and hashed word n-grams of a text, computed with numpy over a whole document at once.

A *word* is a run of letters or digits, except that every Chinese, Japanese or Korean character is a word of its
own: Chinese has no spaces, so its n-grams are character n-grams while English ones are word n-grams, and a
document that mixes both (or holds code) needs no language decision first. Before splitting, the text is
lowercased and NFKD-normalized with combining marks dropped (``café`` == ``cafe``, full-width == ASCII), as
datatrove's ``simplify_text`` does before MinHash, so that copies differing only in case or accents still match.
Numbers stay as they are (datatrove turns them all into 0): a table of figures is not a repetition of one figure.

Every word gets a 64-bit hash (a polynomial over fixed random values of its code points) and every n-gram a hash
of its n word hashes. Python's ``hash`` is salted per process and a per-n-gram xxhash call costs a Python round trip
for each character of a Chinese text; these hashes are identical in every process and cost a few numpy passes
per document. MinHash, decontamination and the repetition heuristics all read the same words.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Character classes (one byte per code point).
SYMBOL, LETTER, CJK, MARK, SPACE = 0, 1, 2, 3, 4
# Blocks whose characters are words on their own: CJK radicals and symbols, kana, bopomofo, CJK ideographs
# (with extensions and compatibility forms) and Hangul syllables.
CJK_BLOCKS = (
    (0x2E80, 0x2FDF),
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0x3190, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0x20000, 0x3134F),
)
# A share of CJK characters among the words above which a document counts as Chinese.
CJK_SHARE_CHINESE = 0.3

_U64 = np.uint64
_NGRAM_MULTIPLIER = _U64(0x9E3779B97F4A7C15)  # odd: the rolling combination loses no bits


@lru_cache(maxsize=1)
def character_classes() -> np.ndarray:
    """The class of every code point (one byte each)."""
    classes = np.full(0x110000, SYMBOL, dtype=np.uint8)
    # Planes 0-3 and the variation selectors of plane 14; the rest is unassigned or private use (symbols).
    for cp in (*range(0x32400), *range(0xE0000, 0xE0200)):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates never appear in a decoded str
            continue
        char = chr(cp)
        category = unicodedata.category(char)
        if category == "Mn":
            classes[cp] = MARK
        elif char.isalnum():
            classes[cp] = LETTER
        elif char.isspace():
            classes[cp] = SPACE
    for low, high in CJK_BLOCKS:
        block = classes[low : high + 1]
        block[block == LETTER] = CJK
    return classes


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise: spreads every input bit over the whole 64-bit output."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


@dataclass
class Words:
    """The words of one text: ``hashes`` (uint64), and each word's ``starts`` and ``lengths`` in ``chars`` (the
    normalized text as code points); ``cjk`` counts the words that are CJK characters."""

    hashes: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    chars: np.ndarray
    cjk: int
    symbols: int
    non_space: int

    def __len__(self) -> int:
        return int(self.hashes.size)

    def span(self, first: int, count: int) -> str:
        """The normalized text of ``count`` words from word ``first`` (for showing what matched)."""
        begin = int(self.starts[first])
        end = int(self.starts[first + count - 1] + self.lengths[first + count - 1])
        return self.chars[begin:end].tobytes().decode("utf-32-le")


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKD", text.lower())


@lru_cache(maxsize=1)
def code_point_values() -> np.ndarray:
    """A fixed random 64-bit value per code point (the same in every process: a seeded generator)."""
    return np.frombuffer(np.random.RandomState(0x6D696E69).bytes(8 * 0x110000), dtype=_U64)


@lru_cache(maxsize=2)
def split_words(text: str) -> Words:
    """The words of ``text`` (see the module docstring). Cached for the last two texts: MinHash and
    decontamination run one after the other on the same document.

    A word's hash is a polynomial over its characters' random values, ``sum_j v(c_j) K^-j``, read off prefix sums
    over the whole text as ``NgramHasher`` does for n-grams: a handful of numpy passes per document."""
    classes = character_classes()
    chars = np.frombuffer(normalize(text).encode("utf-32-le"), dtype=np.uint32)
    kind = classes[chars]
    if (kind == MARK).any():
        keep = kind != MARK
        chars, kind = chars[keep], kind[keep]
    is_letter = kind == LETTER
    is_cjk = kind == CJK
    after_letter = np.zeros_like(is_letter)
    after_letter[1:] = is_letter[:-1]
    in_word = np.flatnonzero(is_letter | is_cjk)
    symbols = int(np.count_nonzero(kind == SYMBOL))
    non_space = int(kind.size - np.count_nonzero(kind == SPACE))
    if in_word.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Words(np.zeros(0, dtype=_U64), empty, empty, chars, 0, symbols, non_space)
    first = np.flatnonzero((is_cjk | (is_letter & ~after_letter))[in_word])  # each word's first character
    ends = np.append(first[1:], in_word.size)
    up, down = _powers(in_word.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.concatenate(([_U64(0)], np.cumsum(code_point_values()[chars[in_word]] * down[: in_word.size])))
        hashes = (prefix[ends] - prefix[first]) * up[first]
    cjk = int(np.count_nonzero(is_cjk[in_word[first]]))
    return Words(hashes, in_word[first], ends - first, chars, cjk, symbols, non_space)


@lru_cache(maxsize=1)
def _inverse_multiplier() -> np.uint64:
    """K^-1 mod 2^64 (K is odd), by Newton's iteration: each step doubles the correct low bits."""
    k, inverse = int(_NGRAM_MULTIPLIER), 1
    for _ in range(7):
        inverse = inverse * (2 - k * inverse) % (1 << 64)
    return _U64(inverse)


_POWERS: dict[str, np.ndarray] = {}


def _powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(K^j, K^-j) mod 2^64 for j < count, grown on demand and kept."""
    if _POWERS.get("up", np.zeros(0)).size < count:
        size = max(count, 2 * _POWERS.get("up", np.zeros(0)).size, 4096)
        with np.errstate(over="ignore"):
            up = np.cumprod(np.full(size, _NGRAM_MULTIPLIER, dtype=_U64))
            down = np.cumprod(np.full(size, _inverse_multiplier(), dtype=_U64))
        _POWERS["up"] = np.concatenate(([_U64(1)], up[:-1]))
        _POWERS["down"] = np.concatenate(([_U64(1)], down[:-1]))
    return _POWERS["up"], _POWERS["down"]


class NgramHasher:
    """Hashes of the n-gram of any size starting at any word, each in O(1) after one pass over the words.

    With ``P[i] = sum_{j<i} h_j K^-j`` (uint64 arithmetic, which wraps mod 2^64 where K is invertible), the n-gram
    at ``i`` is ``(P[i+n] - P[i]) K^i = sum_{j<n} h_{i+j} K^-j``: the same value wherever the n-gram occurs."""

    def __init__(self, word_hashes: np.ndarray):
        self.count = word_hashes.size
        up, down = _powers(self.count + 1)
        self._up = up
        with np.errstate(over="ignore"):
            self._prefix = np.concatenate(([_U64(0)], np.cumsum(word_hashes * down[: self.count], dtype=_U64)))

    def at(self, positions: np.ndarray, n: int) -> np.ndarray:
        """Unmixed hashes (fine for equality tests) of the n-grams starting at ``positions``."""
        with np.errstate(over="ignore"):
            return (self._prefix[positions + n] - self._prefix[positions]) * self._up[positions]

    def all(self, n: int) -> np.ndarray:
        """Mixed 64-bit hashes of every n-gram (``count - n + 1`` of them; none when fewer words)."""
        if self.count < n:
            return np.zeros(0, dtype=_U64)
        return splitmix64(self.at(np.arange(self.count - n + 1), n))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every n-gram of words (``len(hashes) - n + 1`` of them; none when fewer words)."""
    return NgramHasher(hashes).all(n)


def is_chinese(words: Words) -> bool:
    """Script ratio: at least ``CJK_SHARE_CHINESE`` of the words are CJK characters."""
    return len(words) > 0 and words.cjk >= CJK_SHARE_CHINESE * len(words)


class MinHasher:
    """MinHash signatures with ``num_hashes`` functions ``h_i(x) = (a_i * x + b_i) mod 2^64 >> 32`` (a_i odd).

    This is multiply-shift hashing, a universal family like datatrove's ``(a*x + b) mod (2^61 - 1)``, without the
    64-bit modulo that makes numpy several times slower; shingles are already uniformly mixed 64-bit values.
    The minimum is taken over blocks of shingles so that the working array stays in cache."""

    BLOCK = 512

    def __init__(self, num_hashes: int, seed: int):
        rng = np.random.RandomState(seed)
        self.a = rng.randint(0, np.iinfo(np.int64).max, size=num_hashes, dtype=np.int64).astype(_U64) | _U64(1)
        self.b = rng.randint(0, np.iinfo(np.int64).max, size=num_hashes, dtype=np.int64).astype(_U64)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """uint32 minimum of each hash function over ``shingles`` (1-D uint64, not empty)."""
        best = np.full(self.a.size, np.iinfo(np.uint64).max, dtype=_U64)
        block = np.empty((min(self.BLOCK, shingles.size), self.a.size), dtype=_U64)
        with np.errstate(over="ignore"):
            for begin in range(0, shingles.size, self.BLOCK):
                chunk = shingles[begin : begin + self.BLOCK, None]
                view = block[: chunk.shape[0]]
                np.multiply(chunk, self.a, out=view)
                view += self.b
                np.minimum(best, view.min(axis=0), out=best)
        return (best >> _U64(32)).astype(np.uint32)
