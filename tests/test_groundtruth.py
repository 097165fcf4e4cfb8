"""Drift judged against the first wrong number: token positions and detector counts, computed by hand."""

import torch

from opdctl.data.groundtruth import first_error_tokens, judge
from opdctl.models.demo_tokenizer import build_tokenizer


def test_first_error_token_is_the_token_of_the_first_wrong_number():
    tokenizer = build_tokenizer()  # one token per character
    solution = "a3+b7=10,10+c2=12"
    responses = ["a3+b7=10,10+c2=12", "a3+b7=11,11+c2=13", "a3+b8=11", "a3+b7="]
    ids = [tokenizer.encode(r) for r in responses]
    width = max(map(len, ids))
    padded = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    lengths = torch.tensor([len(row) for row in ids])
    found = first_error_tokens(tokenizer, padded, lengths, [solution] * 4)
    assert found == [None, 6, 4, None]
    assert tokenizer.decode(ids[1][6:8]) == "11"


def test_judge_counts_bad_events_around_each_first_error():
    bad = torch.tensor(
        [
            [1, 0, 0, 1, 1, 0],  # error at 2: one false alarm, two found, the first one token late
            [0, 1, 0, 0, 0, 0],  # no error: its bad event is a false alarm
            [0, 0, 0, 0, 1, 1],  # error at 1, but only 4 valid tokens: nothing found inside them
        ],
        dtype=torch.bool,
    )
    mask = torch.tensor([[1] * 6, [1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    detection = judge(bad, mask, [2, None, 1])
    assert (detection.before, detection.after) == (2, 2)
    assert detection.tokens_after == 4 + 3
    assert (detection.with_error, detection.found, detection.delays) == (2, 1, (1,))
    assert detection.precision == 0.5 and detection.recall == 2 / 7 and detection.found_share == 0.5
    assert detection.median_delay == 1


def test_judge_without_errors_or_bad_events_has_no_ratios():
    detection = judge(torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool), [None, None])
    assert detection.precision is None and detection.recall is None and detection.found_share is None
    assert detection.median_delay is None
