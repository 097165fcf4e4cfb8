"""Length-grouped micro-batches: the split that minimises padded positions plus a cost per micro-batch."""

import pytest
import torch

from opdctl.algorithm.batching import length_groups, split_to


def test_a_few_long_rows_get_their_own_micro_batch():
    lengths = torch.tensor([250, 10, 10, 250] + [10] * 26 + [250, 250])
    groups = length_groups(lengths, accum=1, cost=512)
    # one batch: 32 x 250 + 512 = 8,512 positions; split: 28 x 10 + 512 + 4 x 250 + 512 = 2,304
    assert [len(g) for g in groups] == [28, 4]
    assert sorted(groups[1]) == [0, 3, 30, 31]


def test_similar_lengths_stay_one_micro_batch():
    lengths = torch.tensor([100, 104, 96, 110, 99, 120])
    assert length_groups(lengths, accum=1, cost=512) == [[2, 4, 0, 1, 3, 5]]  # shortest first


def test_a_split_must_save_more_than_its_cost():
    lengths = torch.tensor([10, 10, 30, 30])
    # one: 4 x 30 + c; two: 2 x 10 + 2 x 30 + 2c: split only when c < 40
    assert len(length_groups(lengths, accum=1, cost=39)) == 2
    assert len(length_groups(lengths, accum=1, cost=41)) == 1


def test_grad_accum_caps_every_micro_batch():
    lengths = torch.arange(9)
    groups = length_groups(lengths, accum=4, cost=10_000)
    assert [len(g) for g in groups] == [3, 3, 3] and [row for g in groups for row in g] == list(range(9))
    assert length_groups(torch.tensor([], dtype=torch.long), accum=2) == []


def test_every_process_can_be_given_as_many_micro_batches():
    groups = [[0, 1, 2, 3, 4], [5, 6]]
    assert split_to(groups, 2) == groups
    assert split_to(groups, 3) == [[0, 1], [2, 3, 4], [5, 6]]  # the largest halved, order kept
    assert split_to(groups, 4) == [[0, 1], [2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="cannot split 2 rows into 3"):
        split_to([[0], [1]], 3)
