"""FSDP2 for teachers that do not fit twice: the generator and fake score (and their EMA) sharded
with ``torch.distributed.fsdp.fully_shard``, one unit per network block plus the root; the frozen
teacher optionally too. Checkpoints stay one full safetensors state: the sharded states are
gathered (``torch.distributed.checkpoint.state_dict``) and optimizer states keyed by position, as
an unsharded run writes them, so a sharded run resumes, and its checkpoints load anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.ema import local


def true_everywhere(acc, ok: bool) -> bool:
    """True on every process iff ``ok`` on every process (one all-reduce; ``acc``: the Accelerator).
    Every process must take the same branch before a collective, or the collectives hang."""
    if acc.num_processes == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=acc.device)
    return float(acc.reduce(flag, reduction="sum")) == 0.0


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard(module: nn.Module) -> nn.Module:
    """``fully_shard`` each block the module's denoiser names (``shard_units``), then the root."""
    import warnings

    from torch.distributed.fsdp import fully_shard

    # feature taps are views of hidden states; nothing here modifies a network output in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    network = getattr(module, "network", module)
    for unit in network.shard_units():
        fully_shard(unit)
    # the root too reshards after every forward (FSDP2 keeps a root gathered by default): else a
    # no-grad forward (the fake score in a generator step) leaves its gathered weights frozen
    # and stale until the next backward
    fully_shard(module, reshard_after_forward=True)
    return module




def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over parameters of which some are sharded (DTensor) and
    some not (a data-parallel discriminator): the global 2-norm of all gradients (a collective),
    gradients scaled by ``min(1, max_norm / norm)``; returns the norm (inf/nan left unscaled)."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if hasattr(g, "full_tensor")]
    plain = [g for g in grads if not hasattr(g, "full_tensor")]
    square = 0.0
    if sharded:
        square += float(torch.nn.utils.get_total_norm(sharded).full_tensor()) ** 2
    if plain:
        square += float(torch.nn.utils.get_total_norm(plain)) ** 2
    norm = math.sqrt(square)
    if math.isfinite(norm) and norm > max_norm:
        torch._foreach_mul_(local(grads), max_norm / (norm + 1e-6))
    return norm


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (gathered) state dict; a collective for sharded modules (call on every rank; ranks
    other than 0 receive an empty dict)."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options())


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Rank 0's full state (``state``; other ranks pass {}) broadcast into every rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def check_optimizer_state(optimizer, state: dict) -> None:
    """ValueError unless ``state`` (position-keyed) fits ``optimizer``'s groups and parameters."""
    groups = optimizer.param_groups
    if len(state["param_groups"]) != len(groups) or any(
            len(saved["params"]) != len(ours["params"]) for saved, ours in zip(state["param_groups"], groups)):
        raise ValueError("the saved optimizer has other parameter groups")
    params = [p for group in groups for p in group["params"]]
    for index, entry in state["state"].items():
        for value in entry.values():
            if torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) != tuple(params[int(index)].shape):
                raise ValueError("a saved optimizer moment has another shape than its parameter")


def _param_names(optimizer, owner: nn.Module) -> list[str]:
    """The fully qualified names of the optimizer's parameters in its own (position) order."""
    names = {id(p): name for name, p in owner.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(optimizer, owner: nn.Module | None) -> dict:
    """``optimizer.state_dict()`` layout (states keyed by parameter position) of a possibly sharded
    optimizer, gathered; ``owner``: the module holding its parameters when they are sharded (else
    None). A collective when sharded; ranks other than 0 receive an empty state."""
    if owner is None or not optimizer.state:  # (before a first step there is nothing to gather)
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(owner, optimizer, options=_options())
    if "param_groups" not in full:  # only rank 0 receives the gathered state
        return {"state": {}, "param_groups": []}
    index = {name: i for i, name in enumerate(_param_names(optimizer, owner))}
    groups = optimizer.state_dict()["param_groups"]  # position-keyed already; the same on every rank
    return {"state": {index[k]: v for k, v in full["state"].items()}, "param_groups": groups}


def load_optimizer_state(optimizer, owner: nn.Module, state: dict | None) -> None:
    """Inverse of ``optimizer_state``: rank 0 passes the position-keyed state, other ranks None;
    broadcast into every rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    full = {}
    if state is not None:
        order = _param_names(optimizer, owner)
        groups, start = [], 0
        for saved, ours in zip(state["param_groups"], optimizer.param_groups):
            n = len(ours["params"])
            groups.append({**saved, "params": order[start : start + n]})
            start += n
        full = {"state": {order[int(i)]: v for i, v in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(owner, optimizer, full,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
