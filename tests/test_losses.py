"""Both reverse-KL estimators: values and gradients against direct computations."""

import math

import pytest
import torch

from opdctl.algorithm import losses


def _direct_topk(
    logits: torch.Tensor, teacher_lp: torch.Tensor, m: torch.Tensor, n: int, weighting: str
) -> torch.Tensor:
    """The formula written out position by position, candidate by candidate."""
    total = logits.new_zeros(())
    lp = torch.log_softmax(logits, -1)
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            p_vals = lp[b, t].detach()
            scores = {"student_p": p_vals, "teacher_p": teacher_lp[b, t], "none": torch.zeros_like(p_vals)}[weighting]
            w = torch.exp(scores) / torch.exp(scores).sum()
            for v in range(lp.shape[2]):
                reward = -(p_vals[v] - teacher_lp[b, t, v]) * w[v]
                total = total - m[b, t] * reward * lp[b, t, v]
    return total / n


@pytest.mark.parametrize("weighting", ["student_p", "teacher_p", "none"])
def test_topk_matches_direct_formula_in_value_and_gradient(weighting):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, requires_grad=True)
    teacher_lp = torch.log_softmax(torch.randn(2, 3, 4), -1)
    m = torch.tensor([[1.5, 1.0, 0.0], [0.5, 1.2, 1.5]])
    loss = losses.topk_reverse_kl(torch.log_softmax(logits, -1), teacher_lp, m, 5, weighting)
    (grad,) = torch.autograd.grad(loss, logits)
    direct = _direct_topk(logits, teacher_lp, m, 5, weighting)
    (direct_grad,) = torch.autograd.grad(direct, logits)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
    assert torch.allclose(grad, direct_grad, atol=1e-7)


def test_topk_hand_computed_value():
    # one position, two candidates, uniform weighting: w = 1/2 each
    student = torch.tensor([[[math.log(0.5), math.log(0.25)]]])
    teacher = torch.tensor([[[math.log(0.25), math.log(0.25)]]])
    loss = losses.topk_reverse_kl(student, teacher, torch.ones(1, 1), 1, "none")
    # r = -(log 0.5 - log 0.25) / 2 = -ln2/2 ; r2 = 0
    expected = -(-math.log(2) / 2) * math.log(0.5)
    assert loss.item() == pytest.approx(expected)


def test_topk_gradient_moves_mass_towards_the_teacher():
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    teacher = torch.log(torch.tensor([[[0.9, 0.1]]]))
    loss = losses.topk_reverse_kl(torch.log_softmax(logits, -1), teacher, torch.ones(1, 1), 1)
    loss.backward()
    assert logits.grad[0, 0, 0] < 0 < logits.grad[0, 0, 1]  # descent raises the teacher's favourite


def test_topk_gradient_equals_reverse_kl_gradient_over_the_full_support():
    """With S_t the whole vocabulary and student_p weights, the estimator's gradient is grad KL(p||q)."""
    torch.manual_seed(1)
    logits = torch.randn(1, 1, 5, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(1, 1, 5), -1)
    loss = losses.topk_reverse_kl(torch.log_softmax(logits, -1), teacher, torch.ones(1, 1), 1)
    (grad,) = torch.autograd.grad(loss, logits)
    lp = torch.log_softmax(logits, -1)
    kl = (lp.exp() * (lp - teacher)).sum()
    (kl_grad,) = torch.autograd.grad(kl, logits)
    assert torch.allclose(grad, kl_grad, atol=1e-6)


def test_renormalized_topk_hand_computed_value():
    # one position, S_t = two candidates holding 0.5 and 0.3 of the student (0.2 in the tail);
    # renormalised: 0.625 and 0.375, which are also the student_p weights
    student = torch.tensor([[[math.log(0.5), math.log(0.3)]]])
    teacher = torch.tensor([[[math.log(0.4), math.log(0.4)]]])
    loss = losses.topk_reverse_kl(student, teacher, torch.ones(1, 1), 1, renormalize=True)
    p = (0.625, 0.375)
    expected = sum(pv * (math.log(pv) - math.log(0.4)) * math.log(pv) for pv in p)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _topk_logit_gradient(renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient over a 6-token vocabulary of the estimator on the student's top-3."""
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 6, requires_grad=True)
    logprobs = torch.log_softmax(logits, -1)
    top = logprobs.topk(3, dim=-1).indices
    teacher = torch.log_softmax(torch.randn(2, 3, 6), -1).gather(-1, top)
    loss = losses.topk_reverse_kl(logprobs.gather(-1, top), teacher, torch.ones(2, 3), 6, renormalize=renormalize)
    (grad,) = torch.autograd.grad(loss, logits)
    return grad.scatter(-1, top, 0.0), grad.gather(-1, top)


def test_renormalized_topk_never_moves_probability_between_s_t_and_the_tail():
    tail, inside = _topk_logit_gradient(renormalize=True)
    assert tail.abs().max() < 1e-7  # no gradient on tokens outside S_t
    assert torch.allclose(inside.sum(-1), torch.zeros(2, 3), atol=1e-7)  # S_t's total mass unchanged to first order
    tail, inside = _topk_logit_gradient(renormalize=False)
    assert tail.abs().max() > 1e-3  # the paper's estimator does move it


def test_renormalized_topk_is_the_topk_gradient_with_centred_rewards():
    torch.manual_seed(3)
    logits = torch.randn(1, 4, 8, requires_grad=True)
    logprobs = torch.log_softmax(logits, -1)
    top = logprobs.topk(4, dim=-1).indices
    student, teacher = logprobs.gather(-1, top), torch.log_softmax(torch.randn(1, 4, 8), -1).gather(-1, top)
    loss = losses.topk_reverse_kl(student, teacher, torch.ones(1, 4), 4, renormalize=True)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    w = torch.softmax(student.detach(), -1)
    reward = -(student.detach() - teacher) * w
    centred = reward - w * reward.sum(-1, keepdim=True)
    (expected,) = torch.autograd.grad(-(centred * student).sum() / 4, logits)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_renormalized_topk_with_no_candidate_left_is_zero():
    student = torch.log(torch.tensor([[[0.5, 0.3]]])).requires_grad_()
    teacher = torch.log(torch.tensor([[[0.4, 0.4]]]))
    none = torch.zeros(1, 1, 2, dtype=torch.bool)
    loss = losses.topk_reverse_kl(student, teacher, torch.ones(1, 1), 1, candidates=none, renormalize=True)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(student.grad) == 0


def test_sampled_estimator_value_and_gradient():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    sampled = torch.tensor([1, 0])
    lp = torch.log_softmax(logits, -1).gather(-1, sampled[:, None]).squeeze(-1)[None]
    teacher = torch.tensor([[-0.1, -2.0]])
    m = torch.tensor([[1.0, 0.5]])
    loss = losses.sampled_reverse_kl(lp, teacher, m, 3)
    advantage = teacher - lp.detach()
    expected = -(m * advantage * lp).sum() / 3
    assert loss.item() == pytest.approx(expected.item())
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert torch.allclose(grad, expected_grad)


@pytest.mark.parametrize("baseline", [0.0, -1.3, 2.0])
def test_sampled_estimator_in_expectation_is_the_reverse_kl_gradient_whatever_the_baseline(baseline):
    """Averaged over the sampled token y ~ p, the k1 gradient (with any constant baseline) is grad KL(p||q)."""
    torch.manual_seed(2)
    logits = torch.randn(5, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(5), -1)
    lp = torch.log_softmax(logits, -1)
    expected = torch.zeros(5)
    for y in range(5):
        loss = losses.sampled_reverse_kl(lp[y].view(1, 1), teacher[y].view(1, 1), torch.ones(1, 1), 1, baseline)
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        expected += lp[y].exp().detach() * grad
    (kl_grad,) = torch.autograd.grad((lp.exp() * (lp - teacher)).sum(), logits)
    assert torch.allclose(expected, kl_grad, atol=1e-6)


def test_tokens_drawn_by_earlier_weights_are_weighted_by_importance():
    """Averaged over y ~ mu (the weights before an earlier update), the importance-weighted k1 gradient is the
    on-policy one, grad KL(p||q); a padded position (m = 0) with any behaviour log-prob adds nothing."""
    torch.manual_seed(3)
    logits = torch.randn(5, requires_grad=True)
    behaviour = torch.log_softmax(torch.randn(5), -1)  # mu, the policy that drew the tokens
    teacher = torch.log_softmax(torch.randn(5), -1)
    lp = torch.log_softmax(logits, -1)
    expected = torch.zeros(5)
    for y in range(5):
        pair = torch.stack([lp[y], lp[y]]).view(1, 2)
        loss = losses.sampled_reverse_kl(
            pair,
            teacher[y].expand(1, 2),
            torch.tensor([[1.0, 0.0]]),
            1,
            behaviour_logprobs=torch.tensor([[behaviour[y], -100.0]]),  # exp(100) overflows unless masked
        )
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        expected += behaviour[y].exp() * grad
    (kl_grad,) = torch.autograd.grad((lp.exp() * (lp - teacher)).sum(), logits)
    assert torch.allclose(expected, kl_grad, atol=1e-6)


def test_advantage_sum_is_the_masked_mean_of_teacher_minus_student():
    rollout = torch.tensor([[-0.5, -1.0, -9.0]])
    teacher = torch.tensor([[-1.5, -1.0, 0.0]])
    total, count = losses.advantage_sum(rollout, teacher, torch.tensor([[True, True, False]]))
    assert (total, count) == (pytest.approx(-1.0), 2)


def test_loss_weight_zero_removes_a_token():
    student = torch.log_softmax(torch.randn(1, 2, 3), -1)
    teacher = torch.log_softmax(torch.randn(1, 2, 3), -1)
    only_first = losses.topk_reverse_kl(student, teacher, torch.tensor([[1.0, 0.0]]), 1)
    first_alone = losses.topk_reverse_kl(student[:, :1], teacher[:, :1], torch.tensor([[1.0]]), 1)
    assert only_first.item() == pytest.approx(first_alone.item())


def test_token_mean_over_the_step_makes_micro_batches_add_up():
    torch.manual_seed(2)
    logits = torch.randn(4, 3, 5, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(4, 3, 5), -1)
    m = torch.rand(4, 3)
    whole = losses.topk_reverse_kl(torch.log_softmax(logits, -1), teacher, m, 12)
    parts = sum(
        losses.topk_reverse_kl(torch.log_softmax(logits[i : i + 2], -1), teacher[i : i + 2], m[i : i + 2], 12)
        for i in (0, 2)
    )
    assert whole.item() == pytest.approx(parts.item())


def test_reverse_kl_estimate_is_a_masked_mean():
    student = torch.tensor([[-1.0, -2.0, -9.0]])
    teacher = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert losses.reverse_kl_estimate(student, teacher, mask) == pytest.approx((0.5 - 1.0) / 2)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="weighting"):
        losses.candidate_weights(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), "bogus")


def test_restricted_candidates_drop_out_and_weights_renormalise():
    torch.manual_seed(3)
    student = torch.log_softmax(torch.randn(1, 2, 4), -1).requires_grad_()
    teacher = torch.log_softmax(torch.randn(1, 2, 4), -1)
    keep = torch.tensor([[[True, True, False, True], [False, False, False, False]]])
    m = torch.ones(1, 2)
    loss = losses.topk_reverse_kl(student, teacher, m, 2, "student_p", keep)
    # position 0 over candidates {0, 1, 3} only; position 1 has none and contributes nothing
    kept = [0, 1, 3]
    direct = losses.topk_reverse_kl(student[:, :1, kept], teacher[:, :1, kept], m[:, :1], 2, "student_p")
    assert loss.item() == pytest.approx(direct.item())
    (grad,) = torch.autograd.grad(loss, student)
    assert grad[0, 1].abs().sum() == 0 and grad[0, 0, 2] == 0


# forward top-k KL with a tail bucket, and k3 -------------------------------------------------


def test_forward_topk_with_tail_hand_computed_value():
    # teacher top-2 T_t = {0, 1}: q = 0.5, 0.3 (tail 0.2); the student puts p = 0.25, 0.25 there (tail 0.5)
    q = torch.log(torch.tensor([[[0.5, 0.3]]]))
    p = torch.log(torch.tensor([[[0.25, 0.25]]]))
    loss = losses.forward_topk_kl(p, q, torch.tensor([[2.0]]), 4)
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert loss.item() == pytest.approx(2.0 * by_hand / 4, rel=1e-5)


def test_forward_topk_is_the_full_forward_kl_when_the_tail_holds_one_token():
    torch.manual_seed(1)
    student, teacher = torch.log_softmax(torch.randn(5), -1), torch.log_softmax(torch.randn(5), -1)
    top = teacher[:4].argsort(descending=True)  # T_t: four of five ids, the fifth alone in the tail
    loss = losses.forward_topk_kl(student[top][None, None], teacher[top][None, None], torch.ones(1, 1), 1)
    full = (teacher.exp() * (teacher - student)).sum()
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)


def test_forward_topk_tail_gradient_moves_the_mass_outside_t_as_a_whole():
    torch.manual_seed(2)
    logits = torch.randn(6, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(6), -1)
    top = torch.tensor([4, 1, 3])  # T_t; ids 0, 2, 5 are the tail
    student = torch.log_softmax(logits, -1)
    loss = losses.forward_topk_kl(student[top][None, None], teacher[top][None, None], torch.ones(1, 1), 1)
    (grad,) = torch.autograd.grad(loss, logits)
    p, q = student.detach().exp(), teacher.exp()
    tail = torch.tensor([0, 2, 5])
    q_tail, p_tail = 1 - q[top].sum(), 1 - p[top].sum()
    expected = p.clone()
    expected[top] = p[top] - q[top]  # inside T_t: p(v) - q(v)
    expected[tail] = p[tail] * (1 - q_tail / p_tail)  # outside: each id's share of the tail's pull
    assert torch.allclose(grad, expected, atol=1e-6)


def test_forward_topk_ignores_padding_and_stays_finite_when_the_top_k_holds_everything():
    teacher = torch.log(torch.tensor([[[1.0, 1e-9], [0.0, 0.0]]]).clamp(min=1e-12))  # second position: padding
    student = torch.log_softmax(torch.randn(1, 2, 2, requires_grad=True), -1)
    loss = losses.forward_topk_kl(student, teacher, torch.tensor([[1.0, 0.0]]), 1)
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all() and (grad[0, 1] == 0).all()


def test_k3_hand_computed_value_and_gradient():
    student = torch.log(torch.tensor([[0.5, 0.1]])).requires_grad_()
    teacher = torch.log(torch.tensor([[0.25, 0.2]]))
    loss = losses.k3_reverse_kl(student, teacher, torch.tensor([[1.0, 3.0]]), 2)
    r = torch.tensor([0.5, 2.0])  # q/p
    by_hand = (1.0 * (r[0] - 1 - math.log(r[0])) + 3.0 * (r[1] - 1 - math.log(r[1]))) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.allclose(grad, torch.tensor([[1.0 * (1 - 0.5), 3.0 * (1 - 2.0)]]) / 2)  # m_t (1 - r_t) / N


def test_k3_is_zero_where_the_models_agree_and_never_negative():
    torch.manual_seed(3)
    student, teacher = torch.randn(4, 8), torch.randn(4, 8)
    assert losses.k3_reverse_kl(student, student, torch.ones(4, 8), 32).item() == 0.0
    per_token = losses.k3_reverse_kl(student, teacher, torch.ones(4, 8), 1)
    assert per_token.item() >= 0


def test_the_forward_estimator_reads_the_teacher_top_k_after_the_query_layout():
    from opdctl.config.files import validate

    config = validate({"loss": {"estimator": "forward_topk", "k": 2}})
    student_on_query = torch.log(torch.tensor([[[0.4, 0.3, 0.3]]]))  # S_t (2) and y_t
    student_on_teacher = torch.log(torch.tensor([[[0.25, 0.25]]]))
    targets = losses.LossTargets(
        teacher=torch.zeros(1, 1, 3),
        loss_weight=torch.tensor([[2.0]]),
        num_tokens=4,
        teacher_topk=torch.log(torch.tensor([[[0.5, 0.3]]])),
    )
    loss = losses.opd_loss(config, torch.cat([student_on_query, student_on_teacher], -1), targets)
    expected = losses.forward_topk_kl(student_on_teacher, targets.teacher_topk, targets.loss_weight, 4)
    assert loss.item() == pytest.approx(expected.item())
