"""The dynamic response budget against hand-computed steps (docs/algorithm.md)."""

import pytest

from opdctl.algorithm.budget import BudgetLimits, BudgetState, update_budget

PAPER = BudgetLimits(min_len=1024, max_len=12288, increment=100, hit_ratio=0.1, margin=100, patience=3)


def test_grows_when_enough_rollouts_reach_the_boundary():
    # boundary = max(1024, 2048 - 100) = 1948; 1 of 10 reaches it -> hit ratio 0.1 >= 0.1
    result = update_budget(BudgetState(2048, misses=2), [1948] + [10] * 9, PAPER)
    assert result.boundary == 1948
    assert result.hit_ratio == pytest.approx(0.1)
    assert result.state == BudgetState(2148, misses=0)


def test_one_below_the_boundary_is_a_miss():
    result = update_budget(BudgetState(2048), [1947] * 10, PAPER)
    assert result.hit_ratio == 0.0
    assert result.state == BudgetState(2048, misses=1)


def test_shrinks_only_after_patience_then_resets_misses():
    state = BudgetState(2048)
    for expected_misses in (1, 2):
        state = update_budget(state, [0] * 4, PAPER).state
        assert state == BudgetState(2048, misses=expected_misses)
    state = update_budget(state, [0] * 4, PAPER).state
    assert state == BudgetState(1948, misses=0)


def test_boundary_never_below_min_len():
    result = update_budget(BudgetState(1050), [1024, 0], PAPER)
    assert result.boundary == 1024  # 1050 - 100 = 950 < min_len
    assert result.state.current_len == 1150


def test_clamped_at_max_and_min():
    grown = update_budget(BudgetState(12250), [12288], PAPER).state
    assert grown.current_len == 12288
    shrunk = update_budget(BudgetState(1050, misses=2), [0], PAPER).state
    assert shrunk.current_len == 1024


def test_a_hit_resets_accumulated_misses():
    state = update_budget(BudgetState(2048, misses=2), [5000], PAPER).state
    assert state.misses == 0


def test_empty_batch_is_a_miss():
    assert update_budget(BudgetState(2048), [], PAPER).hit_ratio == 0.0
