"""The student sharded across training processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each decoder layer is one FSDP unit; the root unit is the training forward module, which
holds what is left (embeddings, a tied ``lm_head``, the final norm), so the training
forward and generation both enter FSDP through the root. Checkpoints gather full tensors
into an ordinary state dict on process 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

from opdctl.errors import ConfigError

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on process 0 only
SCATTER = StateDictOptions(full_state_dict=True)  # every process passes the whole state


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers keeps whole when splitting a model."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ConfigError(
            f"student.parallel=fsdp: cannot find the decoder layers of {type(model).__name__} "
            "(it declares no _no_split_modules): use student.parallel=ddp"
        )
    return layers


def shard(root: torch.nn.Module, model: torch.nn.Module, device: torch.device) -> FSDPModule:
    """Shard ``model``'s layers, then ``root`` (which contains ``model``), over every process."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    register_fsdp_forward_method(root, "generate")
    return root


@contextmanager
def unsharded(root: FSDPModule) -> Iterator[None]:
    """Every process holds the whole model until exit: one all-gather on entry, none per forward.

    Generation runs a different number of forward passes in each process (rows end at
    different times) and process 0 evaluates alone, so all-gathers per forward would hang.
    """
    units = [module for module in root.modules() if isinstance(module, FSDPModule)]
    root.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        root.set_reshard_after_forward(True)
        root.set_reshard_after_forward(False, recurse=False)  # FSDP's default: the root keeps its weights


@contextmanager
def no_reduce(root: FSDPModule) -> Iterator[None]:
    """Backward keeps gradients unsharded, to be reduce-scattered with the next synchronised backward's."""
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on process 0 (empty elsewhere); every process must call it.

    A shared parameter (a tied ``lm_head``) keeps its first name only, as ``save_pretrained`` writes it.
    """
    state = get_model_state_dict(model, options=GATHER)
    first = {name for name, _ in model.named_parameters()}
    shared = {name for name, _ in model.named_parameters(remove_duplicate=False)} - first
    return {name: tensor for name, tensor in state.items() if name not in shared}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state, keyed by parameter name, on process 0 (empty elsewhere)."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Give each process its shard of a whole optimizer state written by :func:`full_optimizer_state`."""
    set_optimizer_state_dict(model, optimizer, state, options=SCATTER)
