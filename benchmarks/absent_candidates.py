"""How far the top-k loss through a served teacher is from the exact one, by K and handling.

A vLLM server returns its own top-K per position; a student candidate outside it
has no exact teacher log-prob. opdctl either bounds it by the smallest returned
log-prob (loss.absent_candidates=bound) or drops it from S_t (drop). This script
compares the top-k reverse-KL loss and its gradient against the HF teacher's exact
values on the same weights:

    python benchmarks/absent_candidates.py --model-path MODEL --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse

import opdctl  # noqa: F401  (first: thread defaults before torch loads)

# isort: split
import torch

from opdctl.algorithm.losses import LossTargets, opd_loss
from opdctl.backends.types import Sampling
from opdctl.config.files import validate
from opdctl.data.demo_task import held_out
from opdctl.data.prompts import chat_prompt
from opdctl_hf import HFStudent, HFTeacher
from opdctl_vllm import VLLMTeacher


def loss_and_grad(student, rollouts, query, scores, absent: str, k: int) -> tuple[float, torch.Tensor]:
    config = validate({"loss": {"k": k, "absent_candidates": absent}})
    student.model.zero_grad(set_to_none=True)
    student_lp = student.logprobs(rollouts, query)
    mask = rollouts.mask.float()
    targets = LossTargets(scores.query_logprobs, mask, int(mask.sum()), scores.query_exact)
    loss = opd_loss(config, student_lp, targets)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in student.model.parameters() if p.grad is not None])
    return loss.item(), grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="The served teacher's weights.")
    parser.add_argument("--student-path", help="Student weights (default: the teacher's).")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--served-name", default="teacher")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=32)
    args = parser.parse_args()

    student = HFStudent(HFStudent.Config(model=args.student_path or args.model_path))
    prompts = [chat_prompt(student.tokenizer, p.prompt, True) for p in held_out(args.rollouts)]
    rollouts = student.generate(prompts, Sampling(160, temperature=1.0, record_topk=args.k, seed=0))
    query = rollouts.query_ids()
    exact_scores = HFTeacher(HFTeacher.Config(model=args.model_path)).score(rollouts, query, 4)
    exact_loss, exact_grad = loss_and_grad(student, rollouts, query, exact_scores, "bound", args.k)
    mask = rollouts.mask.unsqueeze(-1).expand_as(query[..., : args.k])
    print(f"{int(rollouts.mask.sum())} tokens, k={args.k}; exact loss {exact_loss:.5f}")
    print(f"{'K':>3} {'absent':>7} {'handling':>8} {'loss rel. err':>14} {'grad cosine':>12} {'grad rel. L2':>13}")
    for k_served in (4, 8, 12, 16, 20):
        teacher = VLLMTeacher(VLLMTeacher.Config(model=args.served_name, base_url=args.base_url, logprobs=k_served))
        scores = teacher.score(rollouts, query, 4)
        absent = 1 - scores.query_exact[..., : args.k][mask].float().mean().item()
        for handling in ("bound", "drop"):
            loss, grad = loss_and_grad(student, rollouts, query, scores, handling, args.k)
            cosine = torch.nn.functional.cosine_similarity(grad, exact_grad, dim=0).item()
            rel = ((grad - exact_grad).norm() / exact_grad.norm()).item()
            print(f"{k_served:>3} {absent:>7.1%} {handling:>8} {abs(loss - exact_loss) / abs(exact_loss):>14.2%} "
                  f"{cosine:>12.4f} {rel:>13.2%}")  # fmt: skip
        teacher.close()


if __name__ == "__main__":
    main()
