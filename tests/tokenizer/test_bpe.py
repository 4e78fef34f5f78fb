"""The numpy pair table behind BatchMerger: a vectorized dict.get."""

from __future__ import annotations

import numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.tokenizer.bpe import NO_MERGE, PairTable

PAIR_KEYS = st.integers(min_value=0, max_value=(1 << 48) - 1)


@settings(max_examples=200, deadline=None)
@given(table=st.dictionaries(PAIR_KEYS, st.integers(min_value=0, max_value=1 << 50), max_size=300),
       queries=st.lists(PAIR_KEYS, max_size=300))
def test_pair_table_get_equals_dict_get(table, queries):
    keys = numpy.array(list(table), dtype=numpy.int64)
    values = numpy.array(list(table.values()), dtype=numpy.int64)
    lookups = list(table)[::2] + queries
    found = PairTable(keys, values).get(numpy.array(lookups, dtype=numpy.int64))
    assert found.tolist() == [table.get(key, NO_MERGE) for key in lookups]


def test_pair_table_with_keys_that_share_the_last_slot():
    """64 keys whose home is the table's last slot: probing wraps around, and all stay findable."""
    size_probe = PairTable(numpy.arange(64, dtype=numpy.int64), numpy.zeros(64, dtype=numpy.int64))
    candidates = numpy.random.default_rng(0).integers(0, 1 << 48, 2_000_000, dtype=numpy.int64)
    keys = candidates[size_probe._home_slots(candidates) == size_probe.mask][:64]
    assert keys.size == 64
    table = PairTable(keys, keys + 7)
    assert table.get(keys).tolist() == (keys + 7).tolist()
    assert table.get(keys + 1).tolist() == [NO_MERGE] * 64
