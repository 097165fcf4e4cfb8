"""Drift signal, bad events and monotone weights against hand-computed values (docs/algorithm.md)."""

import math

import pytest
import torch

from opdctl.algorithm import drift
from opdctl.config.files import validate
from opdctl.errors import BackendError
from opdctl.plugins import DRIFT_METRICS


def test_overlap_ratio_counts_shared_ids():
    student = torch.tensor([[[1, 2, 3, 4], [5, 6, 7, 8]]])
    teacher = torch.tensor([[[4, 3, 9, 10], [5, 6, 7, 8]]])
    assert drift.overlap_ratio(student, teacher).tolist() == [[0.5, 1.0]]


def test_overlap_ratio_ignores_order():
    assert drift.overlap_ratio(torch.tensor([[[1, 2, 3]]]), torch.tensor([[[3, 1, 2]]])).item() == 1.0


def test_weighted_overlap_uses_student_probabilities():
    ids = torch.tensor([[[1, 2, 3, 4]]])
    probs = torch.tensor([[[0.6, 0.2, 0.15, 0.05]]])
    teacher = torch.tensor([[[1, 9, 8, 4]]])
    # shared: ids 1 and 4 -> (0.6 + 0.05) / (0.6 + 0.2 + 0.15 + 0.05)
    assert drift.weighted_overlap(ids, probs.log(), teacher).item() == pytest.approx(0.65)


def test_weighted_overlap_renormalises_over_the_top_k():
    ids = torch.tensor([[[1, 2]]])
    probs = torch.tensor([[[0.3, 0.1]]])  # top-2 holds 0.4 of the mass
    assert drift.weighted_overlap(ids, probs.log(), torch.tensor([[[2, 7]]])).item() == pytest.approx(0.25)


def _teacher(probs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[[10 + i for i in range(len(probs))]]])
    return ids, torch.tensor([[probs]]).log()


@pytest.mark.parametrize(
    ("sampled", "top_p", "accepted"),
    [
        (10, 0.45, True),  # the top token alone (0.5) reaches 0.45
        (11, 0.45, False),  # ... so the second is outside the nucleus
        (11, 0.55, True),  # 0.5 < 0.55: the second is needed, and 0.8 reaches it
        (12, 0.75, False),  # 0.5 + 0.3 reaches 0.75: the third is not needed
        (12, 0.85, True),  # 0.8 < 0.85: the third is needed
        (99, 1.0, False),  # not in the teacher's top-k at all
    ],
)
def test_top_p_acceptance_nucleus_edges(sampled, top_p, accepted):
    ids, logprobs = _teacher([0.5, 0.3, 0.15])
    result = drift.top_p_acceptance(torch.tensor([[sampled]]), ids, logprobs, top_p)
    assert result.item() is accepted


@pytest.mark.parametrize(("sampled", "probability"), [(10, 0.5), (11, 0.3), (12, 0.15), (99, 0.0)])
def test_teacher_prob_is_the_teachers_probability_of_the_sampled_token(sampled, probability):
    ids, logprobs = _teacher([0.5, 0.3, 0.15])
    view = drift.DriftView(ids, logprobs, ids, logprobs, torch.tensor([[sampled]]))
    value = drift.teacher_prob_metric(view, 0.2)
    assert value.item() == pytest.approx(probability)
    assert drift.bad_events(value, torch.ones(1, 1, dtype=torch.bool), 0.2).item() is (probability < 0.2)


def test_top_p_accepts_every_top_k_id_when_mass_never_reaches_threshold():
    ids, logprobs = _teacher([0.3, 0.2, 0.1])  # total 0.6 < 0.9
    sampled = torch.tensor([[12]])
    assert drift.top_p_acceptance(sampled, ids, logprobs, 0.9).item() is True


def test_top_p_sorts_teacher_top_k_by_probability():
    ids = torch.tensor([[[10, 11, 12]]])
    logprobs = torch.tensor([[[0.1, 0.7, 0.2]]]).log()  # given out of order
    assert drift.top_p_acceptance(torch.tensor([[11]]), ids, logprobs, 0.5).item() is True
    assert drift.top_p_acceptance(torch.tensor([[10]]), ids, logprobs, 0.5).item() is False


def test_bad_events_threshold_is_strict_and_respects_padding():
    overlap = torch.tensor([[0.69, 0.7, 0.71, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert drift.bad_events(overlap, mask, 0.7).tolist() == [[True, False, False, False]]


def test_bad_events_for_top_p_are_rejections():
    accepted = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert drift.bad_events(accepted, mask, 0.9).tolist() == [[False, True, False]]


def test_weights_decay_after_each_bad_event_inclusive():
    bad = torch.tensor([[False, True, False, True, False]])
    mask = torch.ones_like(bad)
    w = drift.reliability_weights(bad, mask, w_drop=0.25, w_base=0.5)
    assert w.weight.tolist() == [[1.0, 0.75, 0.75, 0.5, 0.5]]
    assert w.loss_weight.tolist() == [[1.5, 1.25, 1.25, 1.0, 1.0]]
    assert w.effective_length.tolist() == [5]


def test_weights_clamp_at_zero_and_effective_length_counts_positive_weights():
    bad = torch.tensor([[True, True, True, False, True]])
    mask = torch.ones_like(bad)
    w = drift.reliability_weights(bad, mask, w_drop=0.4, w_base=0.1)
    expected = [0.6, 0.2, 0.0, 0.0, 0.0]  # 1 - 0.4 c, clipped at 0
    assert w.weight[0].tolist() == pytest.approx(expected)
    assert w.loss_weight[0].tolist() == pytest.approx([x + 0.1 for x in expected])
    assert w.effective_length.tolist() == [2]


def test_weights_are_zero_on_padding_and_padding_never_counts_as_bad():
    bad = torch.tensor([[False, True, True, True], [True, False, False, False]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    w = drift.reliability_weights(bad, mask, w_drop=0.5, w_base=0.5)
    assert w.weight.tolist() == [[1.0, 0.5, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]
    assert w.loss_weight.tolist() == [[1.5, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    assert w.effective_length.tolist() == [2, 4]


def test_zero_w_drop_keeps_full_weight():
    bad = torch.ones((1, 3), dtype=torch.bool)
    w = drift.reliability_weights(bad, torch.ones_like(bad), w_drop=0.0, w_base=0.0)
    assert w.weight.tolist() == [[1.0, 1.0, 1.0]]


def test_weights_never_increase_along_a_rollout():
    torch.manual_seed(0)
    bad = torch.rand(8, 50) < 0.3
    w = drift.reliability_weights(bad, torch.ones_like(bad), w_drop=0.07, w_base=0.5).weight
    assert bool((w[:, 1:] <= w[:, :-1]).all())


def test_uniform_weights_are_plain_opd():
    mask = torch.tensor([[True, True, False]])
    w = drift.uniform_weights(mask)
    assert w.weight.tolist() == [[1.0, 1.0, 0.0]]
    assert w.loss_weight.tolist() == [[1.0, 1.0, 0.0]]
    assert w.effective_length.tolist() == [2]


def test_first_bad_position():
    bad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    assert drift.first_bad_position(bad).tolist() == [2, -1]


def test_each_registered_metric_reads_the_view():
    view = drift.DriftView(
        student_topk=torch.tensor([[[1, 2]]]),
        student_topk_logprobs=torch.tensor([[[math.log(0.75), math.log(0.25)]]]),
        teacher_topk=torch.tensor([[[2, 3]]]),
        teacher_topk_logprobs=torch.tensor([[[math.log(0.75), math.log(0.25)]]]),
        sampled=torch.tensor([[2]]),
    )
    expected = {"overlap_ratio": 0.5, "teacher_top_p": 1.0, "weighted_overlap": pytest.approx(0.25)}
    assert {name: DRIFT_METRICS.get(name)(view, 0.7).item() for name in expected} == expected
    with pytest.raises(BackendError, match=r"unknown drift metric 'nope': set prune.metric to 'overlap_ratio', "):
        DRIFT_METRICS.get("nope")


def test_judge_counts_bad_events_from_earlier_chunks():
    """The streaming monitor judges a chunk at a time: the weights continue from the earlier bad events."""
    ids = torch.tensor([[[1], [1], [1], [1]]])
    teacher = torch.tensor([[[1], [2], [1], [2]]])
    view = drift.DriftView(ids, torch.zeros(1, 4, 1), teacher, torch.zeros(1, 4, 1), torch.zeros(1, 4).long())
    prune = validate({"prune": {"w_drop": 0.25, "threshold": 0.5}}).prune
    mask = torch.ones(1, 4, dtype=torch.bool)
    whole = drift.judge(view, mask, prune)
    first = drift.judge(drift.DriftView(*(t[:, :2] for t in vars(view).values())), mask[:, :2], prune)
    rest = drift.judge(drift.DriftView(*(t[:, 2:] for t in vars(view).values())), mask[:, 2:], prune, first.bad.sum(-1))
    assert whole.bad.tolist() == [[False, True, False, True]]
    assert torch.equal(torch.cat([first.weights.weight, rest.weights.weight], -1), whole.weights.weight)
    assert whole.weights.weight.tolist() == [[1.0, 0.75, 0.75, 0.5]]


@pytest.mark.parametrize(("w_drop", "stop"), [(0.05, 0.0), (0.1, 0.0), (0.3, 0.25), (0.5, 0.0), (1e-3, 0.5)])
def test_bad_events_to_stop_is_the_first_count_whose_weight_reaches_the_stop(w_drop, stop):
    needed = drift.bad_events_to_stop(w_drop, stop)
    bad = torch.ones(1, needed + 1, dtype=torch.bool)
    weight = drift.reliability_weights(bad, torch.ones_like(bad), w_drop, 0.5).weight[0]
    assert weight[needed - 1] <= stop < weight[needed - 2] if needed > 1 else weight[0] <= stop


def test_weights_that_never_fall_never_stop():
    assert drift.bad_events_to_stop(0.0, 0.0) is None
