"""Pretraining examples over a token cache (``utils.data.token_cache``), in the three layouts (``LAYOUTS``):

* ``isolated`` (the default): block ``i`` is tokens ``[i*B, (i+1)*B)`` of the stream, so no token is dropped
  except the final partial block. Inside a block, every document (or document piece) is a *segment*: position
  ids restart at 0 and the segment's first token is not a training target, because predicting it would need
  the previous document. The collator (``utils.data.collate``) keeps segments apart on every attention backend.
* ``cross_document``: the same blocks, one segment each, so documents attend to the end of the previous one
  (upstream's packing, kept for the ``packing`` experiment).
* ``one_per_row``: one document per row, cut to ``B`` tokens, padded per batch (upstream's conventional
  layout: the end of every long document is lost, and short ones leave padding).

``data_fraction`` keeps the first share of blocks (or documents), for the ``scaling`` experiment.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.data.collate import IGNORE_INDEX, LAYOUTS
from utils.data.parquet import DataError
from utils.data.token_cache import TokenCache


def segment_starts(doc_starts: np.ndarray, begin: int, end: int) -> list[int]:
    """Offsets (relative to ``begin``) where a segment starts inside the window ``[begin, end)``."""
    lo, hi = np.searchsorted(doc_starts, [begin, end])
    inner = [int(s) - begin for s in doc_starts[lo:hi] if s > begin]
    return [0, *inner]


def block_example(tokens: np.ndarray, doc_starts: np.ndarray, index: int, block_size: int) -> dict:
    """input_ids, labels and position_ids of block ``index`` (see the module docstring)."""
    begin, end = index * block_size, (index + 1) * block_size
    input_ids = torch.from_numpy(np.asarray(tokens[begin:end], dtype=np.int64))
    labels = input_ids.clone()
    position_ids = torch.empty(block_size, dtype=torch.long)
    starts = segment_starts(doc_starts, begin, end)
    for s, e in zip(starts, [*starts[1:], block_size]):
        position_ids[s:e] = torch.arange(e - s)
        labels[s] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def _kept(total: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction}")
    return max(1, int(total * fraction)) if total else 0


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-size blocks over a token cache; block ``i`` is always the same tokens (resume-safe).

    ``isolate=False``: each block is one segment (documents inside it see each other)."""

    def __init__(self, cache: TokenCache, block_size: int, isolate: bool = True, fraction: float = 1.0):
        self.tokens, self.doc_starts, self.block_size = cache.tokens, cache.doc_starts, block_size
        self.isolate = isolate
        blocks = len(self.tokens) // block_size
        if blocks == 0:
            raise DataError(
                f"Only {len(self.tokens)} tokens in {cache.meta.get('files', 'the data')}: fewer than "
                f"one block of {block_size} (skipped rows: {cache.meta.get('skipped', {})})"
            )
        self.num_blocks = _kept(blocks, fraction)
        self.dropped_tokens = len(self.tokens) - blocks * block_size

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> dict:
        if self.isolate:
            return block_example(self.tokens, self.doc_starts, index, self.block_size)
        ids = torch.from_numpy(
            np.asarray(self.tokens[index * self.block_size : (index + 1) * self.block_size], dtype=np.int64)
        )
        labels = ids.clone()
        labels[0] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(self.block_size)}


class DocumentDataset(torch.utils.data.Dataset):
    """One document per example, cut to ``block_size`` tokens (collate with ``PackedCollator(isolate=False)``)."""

    def __init__(self, cache: TokenCache, block_size: int, fraction: float = 1.0):
        self.tokens, self.block_size = cache.tokens, block_size
        starts = np.asarray(cache.doc_starts, dtype=np.int64)
        self.starts, self.ends = starts, np.append(starts[1:], len(self.tokens))
        if len(starts) == 0:
            raise DataError(f"No document in {cache.meta.get('files', 'the data')}")
        self.num_docs = _kept(len(starts), fraction)
        self.dropped_tokens = int(np.maximum(self.ends - self.starts - block_size, 0).sum())

    def __len__(self) -> int:
        return self.num_docs

    def __getitem__(self, index: int) -> dict:
        begin = int(self.starts[index])
        end = min(int(self.ends[index]), begin + self.block_size)
        ids = torch.from_numpy(np.asarray(self.tokens[begin:end], dtype=np.int64))
        return {"input_ids": ids, "labels": ids.clone()}


def pt_dataset(cache: TokenCache, block_size: int, layout: str = "isolated", fraction: float = 1.0):
    """The training examples of ``layout`` (see the module docstring)."""
    if layout == "one_per_row":
        return DocumentDataset(cache, block_size, fraction)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return PackedDataset(cache, block_size, isolate=layout == "isolated", fraction=fraction)
