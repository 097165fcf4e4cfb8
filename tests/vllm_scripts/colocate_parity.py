"""Run inside the vLLM environment: push trained weights into a colocated engine and compare log-probs.

Prints one JSON line: the largest log-prob gaps between vLLM and the trainer's forward pass.
"""

import json
import sys

import torch

from opdctl.backends.types import Rollouts, Sampling
from opdctl_hf import HFStudent

COLOCATED = {"enforce_eager": True, "max_model_len": 512, "kv_cache_gib": 1}  # 1 GiB whatever else runs


def gap(student: HFStudent, rollouts: Rollouts, engine_lp: torch.Tensor) -> float:
    query = rollouts.response_ids.unsqueeze(-1)
    with torch.no_grad():
        trainer_lp = student.logprobs(rollouts, query)[..., 0]
    return float((trainer_lp - engine_lp).abs()[rollouts.mask].max())


def main() -> None:
    model = sys.argv[1]
    config = HFStudent.Config(model=model, rollout="vllm-colocate", vllm=COLOCATED)
    student = HFStudent(config)
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=1e-2)
    prompts = [[1, 21, 18, *range(4, 30)] * 5 + [20, 18]]  # 152 tokens: beyond one 128-token cache block
    rollouts = student.generate(prompts * 4, Sampling(40, temperature=1.0, record_topk=4, seed=1))
    before = gap(student, rollouts, rollouts.sampled_logprobs)
    loss = -student.logprobs(rollouts, rollouts.response_ids.unsqueeze(-1))[rollouts.mask].sum()
    loss.backward()
    optimizer.step()
    student.weights_updated()  # push, then reset the prefix cache
    after = student.generate(prompts * 4, Sampling(40, temperature=1.0, record_topk=4, seed=2))
    from vllm import SamplingParams

    sequence = prompts[0] + after.responses()[0]
    scored = student.engine.llm.generate(
        [{"prompt_token_ids": sequence}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0].prompt_logprobs
    fixed = Rollouts(
        prompt_ids=[prompts[0][:1]],
        response_ids=torch.tensor([sequence[1:]]),
        lengths=torch.tensor([len(sequence) - 1]),
        topk_ids=torch.zeros(1, len(sequence) - 1, 0, dtype=torch.long),
        topk_logprobs=torch.zeros(1, len(sequence) - 1, 0),
        sampled_logprobs=torch.zeros(1, len(sequence) - 1),
        finish_reasons=["length"],
    )
    prompt_lp = torch.tensor([[scored[i][t].logprob for i, t in enumerate(sequence) if i > 0]])
    print(
        json.dumps(
            {
                "before_push_sampled": before,
                "after_push_sampled": gap(student, after, after.sampled_logprobs),
                "after_push_prompt": gap(student, fixed, prompt_lp),
                "prompt_tokens": len(sequence),
                "finish": after.finish_reasons,
            }
        )
    )


if __name__ == "__main__":
    main()
