"""The learning-rate schedules are transformers' (the same rate at every update, the same saved state)."""

import pytest
import torch
from transformers import get_scheduler

from opdctl.algorithm.schedules import lr_scheduler

TRANSFORMERS_NAME = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 10), (10, 10), (0, 1), (4, 7)])
def test_rates_equal_transformers_schedulers_at_every_update(schedule, warmup, total):
    ours = lr_scheduler(_optimizer(), schedule, warmup, total)
    theirs = get_scheduler(TRANSFORMERS_NAME[schedule], _optimizer(), warmup, num_training_steps=total)
    for _ in range(total + 2):
        assert ours.get_last_lr() == theirs.get_last_lr()
        ours.optimizer.step(), theirs.optimizer.step()
        ours.step(), theirs.step()


def test_a_checkpoint_saved_with_transformers_scheduler_resumes_at_the_same_rate():
    theirs = get_scheduler("cosine", _optimizer(), 2, num_training_steps=20)
    for _ in range(7):
        theirs.optimizer.step()
        theirs.step()
    ours = lr_scheduler(_optimizer(), "cosine", 2, 20)
    ours.load_state_dict(theirs.state_dict())
    assert ours.last_epoch == 7 and ours.get_last_lr() == theirs.get_last_lr()
    ours.optimizer.step(), theirs.optimizer.step()
    ours.step(), theirs.step()
    assert ours.get_last_lr() == theirs.get_last_lr()
