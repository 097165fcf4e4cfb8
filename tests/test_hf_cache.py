"""The decoding KV cache that grows in place: the same keys, values and rollouts as transformers' DynamicCache."""

import torch
from transformers import DynamicCache, Qwen2Config
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

import opdctl_hf.sampling
from opdctl.backends.types import Sampling
from opdctl_hf import HFStudent
from opdctl_hf.cache import MIN_SPARE, GrowingLayer, decoding_cache

from .test_hf_backends import PROMPTS


def _states(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn((batch, 2, length, 3), generator=generator) for _ in range(2))


def test_a_growing_layer_holds_what_concatenation_would():
    growing, plain = GrowingLayer(), DynamicLayer()
    widths = [5, 1, 1, 7, *[1] * (MIN_SPARE + 10), 40]  # past the first capacity and the next
    for step, width in enumerate(widths):
        if step == 3:  # the second row leaves the batch
            for layer in (growing, plain):
                layer.batch_select_indices(torch.tensor([0, 2]))
        new = _states(3 if step < 3 else 2, width, step)
        got, want = growing.update(*new), plain.update(*new)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert growing.get_seq_length() == plain.get_seq_length() == sum(widths)
    growing.crop(-4)
    assert torch.equal(growing.keys, plain.keys[..., :-4, :])
    growing.reset()
    assert growing.get_seq_length() == 0


def test_only_full_attention_layers_are_replaced():
    config = Qwen2Config(
        num_hidden_layers=2,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,  # layer 0 full attention, layer 1 a sliding window
        hidden_size=8,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=16,
        vocab_size=10,
    )
    kinds = [type(layer) for layer in decoding_cache(config).layers]
    assert kinds[0] is GrowingLayer and kinds[1] is DynamicSlidingWindowLayer


def test_rollouts_equal_those_decoded_with_transformers_cache(tiny_models, monkeypatch):
    """Sampled tokens and recorded log-probs are bitwise those of DynamicCache, with rows finishing early and
    more tokens than the first buffer holds."""
    student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
    sampling = Sampling(max_new_tokens=MIN_SPARE + 40, temperature=1.0, record_topk=4, seed=5)
    prompts = [*PROMPTS, [1, 21]]
    growing = student.generate(prompts, sampling)
    monkeypatch.setattr(opdctl_hf.sampling, "decoding_cache", lambda config: DynamicCache(config=config))
    plain = student.generate(prompts, sampling)
    assert len(set(growing.lengths.tolist())) > 1 and int(growing.lengths.max()) > MIN_SPARE
    for name in ("response_ids", "lengths", "topk_ids", "topk_logprobs", "sampled_logprobs"):
        assert torch.equal(getattr(growing, name), getattr(plain, name)), name
