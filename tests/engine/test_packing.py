"""Token-budget packing, a pure function."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridembed.engine import pack_by_token_budget


@given(st.lists(st.integers(1, 600), max_size=200), st.integers(1, 5000),
       st.one_of(st.none(), st.integers(1, 64)))
def test_every_text_once_and_budget_kept(lengths, budget, max_items):
    batches = pack_by_token_budget(lengths, budget, max_items)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= budget or len(batch) == 1
        assert max_items is None or len(batch) <= max_items


def test_longest_first_and_similar_lengths_together():
    lengths = [5, 100, 6, 98, 5, 101]
    batches = pack_by_token_budget(lengths, 210)
    assert batches[0] == [5, 1]
    assert [lengths[i] for i in batches[-1]] == [5, 5]


def test_bad_budget():
    with pytest.raises(ValueError):
        pack_by_token_budget([1, 2], 0)


@given(st.lists(st.integers(1, 600), max_size=200), st.integers(1, 5000))
def test_unpadded_every_text_once_real_tokens_within_budget(lengths, budget):
    batches = pack_by_token_budget(lengths, budget, padded=False)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert sum(lengths[i] for i in batch) <= budget or len(batch) == 1


def test_unpadded_cuts_a_call_into_the_fewest_even_batches():
    # 32 texts of 25-54 tokens (1,190 in all) over a 1,024 budget: two halves, not 27 + 5
    lengths = [25 + (7 * i) % 30 for i in range(32)]
    batches = pack_by_token_budget(lengths, 1024, padded=False)
    sizes = [sum(lengths[i] for i in b) for b in batches]
    assert len(batches) == 2 and max(sizes) - min(sizes) <= max(lengths)
    assert min(lengths[i] for i in batches[0]) >= max(lengths[i] for i in batches[1])


def _cost(lengths, batches, overhead):
    return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)


def _fits(lengths, batch, budget, max_items):
    return (len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= budget) and (
        max_items is None or len(batch) <= max_items)


@given(st.lists(st.integers(1, 600), max_size=200), st.integers(1, 5000),
       st.one_of(st.none(), st.integers(1, 64)), st.floats(0, 100))
def test_cost_cut_every_text_once_and_within_budget(lengths, budget, max_items, overhead):
    batches = pack_by_token_budget(lengths, budget, max_items, batch_overhead=overhead)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(_fits(lengths, b, budget, max_items) for b in batches)


def _partitions(n):
    """Every cut of n consecutive items into non-empty runs, as (start, stop) lists."""
    if n == 0:
        yield []
        return
    for first in range(1, n + 1):
        for rest in _partitions(n - first):
            yield [(0, first)] + [(a + first, b + first) for a, b in rest]


@given(st.lists(st.integers(1, 80), max_size=9), st.integers(1, 300),
       st.one_of(st.none(), st.integers(1, 5)), st.integers(0, 60))
def test_cost_cut_is_the_cheapest_cut_of_the_sorted_texts(lengths, budget, max_items,
                                                          overhead):
    """Against every cut of the length-sorted texts that keeps the limits (2**(n-1) of
    them): none is cheaper than the one chosen."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    cuts = ([order[a:b] for a, b in cut] for cut in _partitions(len(order)))
    least = min(_cost(lengths, c, overhead) for c in cuts
                if all(_fits(lengths, b, budget, max_items) for b in c))
    got = pack_by_token_budget(lengths, budget, max_items, batch_overhead=overhead)
    assert _cost(lengths, got, overhead) == least


def test_cost_cut_splits_mixed_lengths_and_keeps_similar_ones_whole():
    mixed = [25 + (7 * i) % 30 for i in range(20)]  # a server's merged batch: 25-54 tokens
    assert len(pack_by_token_budget(mixed, 2048)) == 1
    cut = pack_by_token_budget(mixed, 2048, batch_overhead=10)
    assert 2 <= len(cut) <= 6
    # each batch is a run of the length-sorted texts, the longest first
    order = sorted(range(20), key=lambda i: (-mixed[i], i))
    assert [i for b in cut for i in b] == order
    assert _cost(mixed, cut, 10) < min(_cost(mixed, [list(range(20))], 10),
                                       _cost(mixed, [[i] for i in range(20)], 10))
    even = [40, 40, 39, 40, 38, 40]
    assert pack_by_token_budget(even, 1024, batch_overhead=10) == [[0, 1, 3, 5, 2, 4]]
    # with no overhead, padding is never worth it: one batch per length
    assert pack_by_token_budget(even, 1024, batch_overhead=0) == [[0, 1, 3, 5], [2], [4]]


def test_cost_cut_fills_the_budget_and_leaves_the_remainder_last():
    lengths = [37] * 100  # equal lengths: no padding to save, only passes
    batches = pack_by_token_budget(lengths, 1024, batch_overhead=10)
    assert [len(b) for b in batches] == [27, 27, 27, 19]
    # a batch exactly at the budget is within it
    assert pack_by_token_budget([5, 5], 10, batch_overhead=10) == [[0, 1]]
    assert [len(b) for b in pack_by_token_budget([32] * 64, 1024, batch_overhead=10)] == [32, 32]
    assert [len(b) for b in pack_by_token_budget([32] * 64, 1024, 20, batch_overhead=10)] == [
        20, 20, 20, 4]


@pytest.mark.parametrize("overhead", [-1, float("nan")])
def test_bad_overhead(overhead):
    with pytest.raises(ValueError, match="batch_overhead"):
        pack_by_token_budget([1, 2], 10, batch_overhead=overhead)


def test_the_encoder_cuts_batches_by_cost_on_cpus_only():
    from hybridembed.engine import Encoder, Outputs
    from tests.engine.test_encoder import SPECIAL, ArithmeticRuntime

    ids = [[1, *range(3, 3 + n), 2] for n in (40, 8, 33, 2, 25, 17, 5, 38)]
    for device, most in (("cpu", 8), ("cuda", 1)):
        runtime = ArithmeticRuntime()
        runtime.device = device
        Encoder(runtime, 0, SPECIAL, max_batch_tokens=10_000).encode(
            ids, Outputs(dense=True, sparse=False, multivector=False))
        assert (len(runtime.forward_started) > 2) == (device == "cpu")
        assert len(runtime.forward_started) <= most


@given(st.lists(st.integers(1, 600), max_size=200), st.integers(1, 5000), st.integers(1, 8))
def test_unpadded_batches_stay_within_a_padded_cap(lengths, budget, times):
    cap = times * budget
    batches = pack_by_token_budget(lengths, budget, padded=False, max_padded=cap)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert sum(lengths[i] for i in batch) <= budget or len(batch) == 1
        assert max(lengths[i] for i in batch) * len(batch) <= cap or len(batch) == 1


def test_a_long_text_beside_many_short_ones_is_not_laid_out_huge():
    """Budgeted by real tokens, one 512-token text and a hundred 5-token ones fit 1,024,
    but padded for attention they are 51,712 positions."""
    from hybridembed.engine import Encoder, Outputs
    from hybridembed.engine import encoder as encoder_module
    from tests.engine.test_encoder import SPECIAL, ArithmeticRuntime

    class Ragged(ArithmeticRuntime):
        packs_ragged = True

        def __init__(self):
            super().__init__()
            self.shapes = []

        def forward(self, input_ids, attention_mask, **kwargs):
            self.shapes.append(input_ids.shape)
            return super().forward(input_ids, attention_mask, **kwargs)

    runtime = Ragged()
    ids = [[1, *range(3, 513), 2]] + [[1, 3, 4, 5, 2]] * 100
    rows = Encoder(runtime, 0, SPECIAL, max_batch_tokens=1024).encode(
        ids, Outputs(dense=True, sparse=False, multivector=False))
    cap = encoder_module.RAGGED_MAX_PADDED * 1024
    assert all(n * width <= cap for n, width in runtime.shapes)
    assert sum(n for n, _ in runtime.shapes) == 101 and all(r.dense is not None for r in rows)
