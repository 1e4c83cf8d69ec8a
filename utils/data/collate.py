"""Batches for every stage in one packed layout: rows of sequences laid end to end, position ids that restart at
every document or conversation, no attention mask, no padding, and ``use_cache=False``.

Every attention backend isolates the segments from that alone: flash-attention-2 through its varlen kernel,
flex_attention through a block-sparse document mask, sdpa and eager through a document mask that transformers
derives from the restarting positions. transformers does that derivation only when the forward has no KV cache,
which is why the batch says ``use_cache=False`` (``tests/test_collate.py`` pins packed == separate documents on
every backend, and shows the leak with a cache).

``single_row=True`` (flash-attention-2, whose varlen kernel splits one row) lays the whole micro-batch end to end in
one row: nothing is padded. Other kernels get one row per example: PT blocks have one length; SFT rows (whole
conversations packed up to max_length) are padded to the longest, each pad token its own one-token segment with no
target. One row would pad nothing there too, but sdpa and eager then attend across the whole micro-batch, which is
quadratic in its length: measured on CPU, a 4 x 256 PT batch as one row of 1,024 trains 53% slower per step, and
SFT rows of up to 1,024 tokens lose half their real tokens per second.

``isolate=False`` keeps upstream's layout for comparison: one sequence per row, padded, with a 2D mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # the label value the loss skips (PyTorch's cross-entropy default)
# How sequences (PT documents, SFT conversations) are laid into training rows, one name and one set of values for
# every stage: ``isolated`` packs them end to end, each attending only to itself (the default); ``cross_document``
# packs them the same way but lets each attend to the ones before it in its row (upstream's PT packing);
# ``one_per_row`` gives each its own row, cut to the length limit and padded (upstream's SFT and conventional PT).
LAYOUTS = ("isolated", "cross_document", "one_per_row")
LAYOUT_HELP = (
    "isolated: sequences packed end to end, each attending only to itself; cross_document: packed, attending across "
    "sequences (upstream's PT packing); one_per_row: one sequence per row, cut and padded (upstream's SFT layout). "
    "The last two exist for comparison (bash run.sh experiment packing)."
)


def positions_from_lengths(seq_lengths: list[int]) -> torch.Tensor:
    """``[3, 2] -> [0, 1, 2, 0, 1]``: position ids restarting at every packed sequence."""
    return torch.cat([torch.arange(n) for n in seq_lengths])


@dataclass
class PackedCollator:
    """Lay examples out in the packed layout (see the module docstring); count real and computed tokens.

    Examples carry ``input_ids`` and ``labels`` plus either ``position_ids`` (PT blocks) or ``seq_lengths``
    (TRL-packed SFT rows); with neither, an example is one sequence. The first token of every segment is never
    a target: predicting it would need the previous segment.
    """

    pad_token_id: int = 0
    isolate: bool = True
    single_row: bool = False

    def __post_init__(self) -> None:
        self.real_tokens = 0
        self.computed_tokens = 0

    def __call__(self, examples: list[dict]) -> dict:
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        labels = [torch.as_tensor(e["labels"], dtype=torch.long) for e in examples]
        self.real_tokens += sum(len(i) for i in ids)
        if not self.isolate:
            return self._padded(ids, labels)
        positions = [self._positions(e, len(i)) for e, i in zip(examples, ids)]
        if self.single_row:
            ids, labels, positions = [torch.cat(ids)], [torch.cat(labels)], [torch.cat(positions)]
        width = max(len(i) for i in ids)
        self.computed_tokens += width * len(ids)
        # A pad token at position 0 starts a segment of its own: it sees nothing and nothing sees it.
        batch = {
            "input_ids": _pad(ids, width, self.pad_token_id),
            "labels": _pad(labels, width, IGNORE_INDEX),
            "position_ids": _pad(positions, width, 0),
        }
        batch["labels"][batch["position_ids"] == 0] = IGNORE_INDEX
        return {**batch, "use_cache": False}

    def _padded(self, ids: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
        width = max(len(i) for i in ids)
        self.computed_tokens += width * len(ids)
        return {
            "input_ids": _pad(ids, width, self.pad_token_id),
            "labels": _pad(labels, width, IGNORE_INDEX),
            "attention_mask": _pad([torch.ones_like(i) for i in ids], width, 0),
        }

    @staticmethod
    def _positions(example: dict, length: int) -> torch.Tensor:
        if "position_ids" in example:
            return torch.as_tensor(example["position_ids"], dtype=torch.long)
        if "seq_lengths" in example:
            return positions_from_lengths(list(example["seq_lengths"]))
        return torch.arange(length)

    def take_real_token_share(self) -> float | None:
        """Share of computed tokens that were real since the last call, then reset the counters."""
        if not self.computed_tokens:
            return None
        share = self.real_tokens / self.computed_tokens
        self.real_tokens = self.computed_tokens = 0
        return share


def _pad(rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
