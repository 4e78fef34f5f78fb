"""Applying BPE merges to a pre-token in pure Python (the C extension's encoder does the same in C).

Manual: docs/tokenizer.md
"""

from __future__ import annotations

import itertools

import numpy as np

ID_BITS = 24
ID_MASK = (1 << ID_BITS) - 1
NO_MERGE = 1 << 62  # value of a pair that is not a merge: greater than every real one


def merge_values(merge_ids: np.ndarray) -> dict[int, int]:
    """`left << ID_BITS | right` -> `rank << ID_BITS | merged id` for merges given as (merges, 3)
    (left, right, merged) ids in rank order; a pair that appears twice keeps its first merge."""
    keys = merge_ids[:, 0] << ID_BITS | merge_ids[:, 1]
    values = np.arange(len(merge_ids), dtype=np.int64) << ID_BITS | merge_ids[:, 2]
    return dict(zip(keys[::-1].tolist(), values[::-1].tolist(), strict=True))  # reversed: a pair's first merge wins


def merge_word(byte_ids: list[int], merge_values: dict[int, int]) -> tuple[int, ...]:
    """Token ids of one pre-token, given the ids of its bytes."""
    ids = list(byte_ids)
    get = merge_values.get  # bound once: this loop runs for every new pre-token
    # values[i] is the merge of (ids[i], ids[i + 1]); the rank sits in the high bits, so min() is the best merge
    values = [get(left << ID_BITS | right, NO_MERGE) for left, right in itertools.pairwise(ids)]
    while values:
        best = min(values)
        if best == NO_MERGE:
            break
        # equal values are the same pair: merge the leftmost. One occurrence at a time equals GPT-2's "every
        # occurrence of the best pair": any pair containing the new token ranks after the merge that made it.
        position = values.index(best)
        ids[position] = best & ID_MASK
        del ids[position + 1]
        del values[position]
        # only the pairs touching the merged token changed: recompute those two, not the whole word
        if position > 0:
            values[position - 1] = get(ids[position - 1] << ID_BITS | ids[position], NO_MERGE)
        if position < len(values):
            values[position] = get(ids[position] << ID_BITS | ids[position + 1], NO_MERGE)
    return tuple(ids)
