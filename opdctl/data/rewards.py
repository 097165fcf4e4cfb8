"""Task rewards: how right a rollout's final answer is, for OPD mixed with a verifiable reward (``reward.coef``).

A reward function takes the response text and the row's reference answer and returns a number
(1 for right, 0 for wrong in the built-ins). Built-ins register here; another package registers
its own in the entry-point group ``opdctl.rewards``.
"""

from __future__ import annotations

from opdctl.data.grading import extract_answer, grade_response
from opdctl.plugins import REWARDS

TIMEOUT_SECONDS = 5  # math-verify's limit per parse and comparison; a grade that runs out is wrong


@REWARDS.register("correct")
def correct(response: str, answer: str) -> float:
    """1 if the last \\boxed{} answer (else the last number) equals the reference by math-verify, else 0."""
    return float(grade_response(answer, response, lenient=True, timeout=TIMEOUT_SECONDS).correct)


@REWARDS.register("exact")
def exact(response: str, answer: str) -> float:
    """1 if the last \\boxed{} answer (else the last number) is the reference, character for character."""
    extracted = extract_answer(response, lenient=True)
    return float(extracted is not None and extracted.strip() == answer.strip())
