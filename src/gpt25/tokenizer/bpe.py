"""Applying BPE merges to pre-tokens: one word in pure Python, or many words at once with numpy.

Both apply merges in rank order, one occurrence at a time: find the lowest-ranked adjacent pair,
merge its leftmost occurrence, repeat. This equals GPT-2's "merge every occurrence of the best
pair" because any pair containing the new token ranks after the merge that made it.

Merges are looked up by one int per pair, `left << ID_BITS | right`, and give one int per merge,
`rank << ID_BITS | merged_id`, so the best pair is simply the smallest value.
"""

from __future__ import annotations

import itertools

import numpy as np

ID_BITS = 24
ID_MASK = (1 << ID_BITS) - 1
NO_MERGE = 1 << 62  # value of a pair that is not a merge: greater than every real one
PYTHON_TAIL_WORDS = 16


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
        position = values.index(best)  # equal values are the same pair: GPT-2 merges the leftmost first
        ids[position] = best & ID_MASK
        del ids[position + 1]
        del values[position]
        # only the pairs touching the merged token changed: recompute those two, not the whole word
        if position > 0:
            values[position - 1] = get(ids[position - 1] << ID_BITS | ids[position], NO_MERGE)
        if position < len(values):
            values[position] = get(ids[position] << ID_BITS | ids[position + 1], NO_MERGE)
    return tuple(ids)


class BatchMerger:
    """merge_word for many words at once: every step merges one pair in each unfinished word.

    All words sit end to end in one array with a parallel array of word numbers; a word leaves
    the arrays when it has no pair left to merge.
    """

    def __init__(self, merge_values: dict[int, int], byte_ids: list[int]) -> None:
        keys = np.fromiter(merge_values.keys(), dtype=np.int64, count=len(merge_values))
        order = np.argsort(keys)
        self.sorted_keys = keys[order]
        values = np.fromiter(merge_values.values(), dtype=np.int64, count=len(merge_values))
        self.sorted_values = np.append(values[order], NO_MERGE)  # index len(keys): not a merge
        self.merge_values = merge_values
        self.byte_ids = np.asarray(byte_ids, dtype=np.int64)
        # value of every pair of bytes, so the first lookup (all positions) is a plain gather
        pairs = (self.byte_ids[:, None] << ID_BITS | self.byte_ids[None, :]).ravel()  # (65536,)
        self.byte_pair_values = np.array([merge_values.get(key, NO_MERGE) for key in pairs.tolist()], dtype=np.int64)

    def merge(self, words: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of each word (given as its UTF-8 bytes): (number of ids of each word, all ids in word order)."""
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        data = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int64)  # (positions,)
        ids = self.byte_ids[data]
        word = np.repeat(np.arange(len(words), dtype=np.int64), lengths)  # (positions,)
        values = np.full(ids.size, NO_MERGE, dtype=np.int64)  # (positions,) pair starting here
        values[:-1] = self.byte_pair_values[data[:-1] << 8 | data[1:]]
        values[:-1][word[:-1] != word[1:]] = NO_MERGE
        finished_ids: list[np.ndarray] = []
        finished_word: list[np.ndarray] = []
        # a step costs about the same for 1 word as for 1000: leave the last few long words to Python
        words_left = len(words)
        while words_left > PYTHON_TAIL_WORDS:
            ids, word, values, words_left = self._step(ids, word, values, finished_ids, finished_word)
        if words_left:
            self._merge_in_python(ids, word, finished_ids, finished_word)
        return self._regroup(finished_ids, finished_word, len(words))

    def _merge_in_python(self, ids: np.ndarray, word: np.ndarray, finished_ids: list, finished_word: list) -> None:
        """Finish the words left in `ids` with merge_word, one by one."""
        starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]]).tolist() + [ids.size]
        flat, word_numbers = ids.tolist(), word[starts[:-1]].tolist()
        for number, start, end in zip(word_numbers, starts, starts[1:], strict=False):
            merged = merge_word(flat[start:end], self.merge_values)
            finished_ids.append(np.array(merged, dtype=np.int64))
            finished_word.append(np.full(len(merged), number, dtype=np.int64))

    def _update_values(self, ids: np.ndarray, word: np.ndarray, values: np.ndarray, positions: np.ndarray) -> None:
        """Recompute values[positions] (positions < ids.size - 1): NO_MERGE across words."""
        keys = ids[positions] << ID_BITS | ids[positions + 1]
        index = np.searchsorted(self.sorted_keys, keys)  # merge_values.get for an array of keys
        index[self.sorted_keys[np.minimum(index, len(self.sorted_keys) - 1)] != keys] = len(self.sorted_keys)
        found = self.sorted_values[index]
        found[word[positions] != word[positions + 1]] = NO_MERGE
        values[positions] = found

    def _step(self, ids, word, values, finished_ids, finished_word):
        """Set finished words aside and merge the best pair of every other word."""
        starts_word = np.empty(ids.size, dtype=bool)  # (positions,) True where a word begins
        starts_word[0] = True
        np.not_equal(word[1:], word[:-1], out=starts_word[1:])
        segment = np.cumsum(starts_word) - 1  # (positions,) index of the word among those left
        best = np.minimum.reduceat(values, np.flatnonzero(starts_word))  # (words left,)
        words_done = best == NO_MERGE
        done = words_done[segment]
        finished_ids.append(ids[done])
        finished_word.append(word[done])
        candidates = np.flatnonzero((values == best[segment]) & ~done)
        if candidates.size:
            candidates = candidates[np.r_[True, segment[candidates[1:]] != segment[candidates[:-1]]]]
        ids[candidates] = values[candidates] & ID_MASK  # the leftmost best pair of each word
        keep = ~done
        keep[candidates + 1] = False
        new_index = np.cumsum(keep) - 1
        ids, word, values = ids[keep], word[keep], values[keep]
        values[-1:] = NO_MERGE  # the last position may hold a merged token, whose old value is stale
        merged = new_index[candidates]
        changed = np.concatenate([merged[merged > 0] - 1, merged[merged < ids.size - 1]])
        self._update_values(ids, word, values, changed)
        return ids, word, values, best.size - int(np.count_nonzero(words_done))

    @staticmethod
    def _regroup(finished_ids, finished_word, num_words: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.concatenate(finished_ids) if finished_ids else np.empty(0, dtype=np.int64)
        word = np.concatenate(finished_word) if finished_word else np.empty(0, dtype=np.int64)
        order = np.argsort(word, kind="stable")  # a word's positions leave together, in order
        return np.bincount(word, minlength=num_words), ids[order]
