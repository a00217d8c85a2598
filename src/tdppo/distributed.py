"""Data parallelism on ``torch.distributed``: shards of the env batch, exact statistics merges.

``torchrun --nproc_per_node=N -m tdppo train --shards S ...``: the env batch of ``num_envs`` is
``S`` shards of ``num_envs / S`` envs each (``S`` a multiple of the world size ``N``); process
``r`` holds shards ``[r * S / N, (r + 1) * S / N)``. The mathematics depends on ``S``, never on
``N``: every random draw comes from the one root key and global env or shard ids, so one process
running ``S`` shards and ``N`` processes running ``S / N`` each compute the same run.

Where the processes meet (gloo on CPU, NCCL on CUDA). Under ``torchrun`` the train step runs
eagerly (the trainer turns ``--compile`` off and says so: collectives inside inductor's CPU
graphs corrupted memory with gloo here), so the collectives below are eager calls:

- **Normalizer statistics**, every vector step: each shard's batch moments (count, mean, M2 in
  float64, :func:`shard_moments`) are gathered in shard order and Chan-merged left to right into
  one batch moment, which is merged into the running statistics; every process holds the same
  bits as one process running the same ``S`` shards. Running states are never all-reduced (a
  restored count would be counted ``N`` times).
- **Gradients**: one flat buffer, one all-reduce (mean), then the usual clipping and Adam.
  Advantages are normalized with global moments; metrics, episode counts and the finiteness
  flags are reduced, so no process branches alone.
- **Checkpoints**: env-batched leaves are gathered to rank 0 in the single-process layout;
  rank 0 writes with the atomic save; any world size that divides ``S`` resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from tdppo import stats

__all__ = ["Shards", "init_shards", "shard_moments", "ENV_BATCHED"]

ENV_BATCHED = "acc"
"""Besides the env subtree, transform leaves of this name hold one row per env."""


def _fc():
    import torch.distributed._functional_collectives as fc

    return fc


@dataclass(frozen=True)
class Shards:
    """The env batch as ``count`` shards, of which this process runs ``local`` from ``first``.

    ``world == 1``: no collective is ever called (one process may still run several shards).
    """

    count: int = 1
    rank: int = 0
    world: int = 1
    group: Any = None
    owned: bool = False  # whether init_shards started the process group (close_shards ends it)

    @property
    def local(self) -> int:
        return self.count // self.world

    @property
    def first(self) -> int:
        return self.rank * self.local

    def local_envs(self, num_envs: int) -> int:
        return num_envs // self.world

    def env_offset(self, num_envs: int) -> int:
        return self.rank * self.local_envs(num_envs)

    # -- collectives (identity in one process) ---------------------------------------------------
    # Compiled code uses the functional collectives (traceable; the compiler orders their
    # waits). Eager code uses the classic blocking ones: an eager functional collective on gloo
    # may still read its input after the Python side has freed it.
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``x`` along dim 0, in rank order."""
        if self.world == 1:
            return x
        x = x.contiguous()
        if torch.compiler.is_compiling():
            fc = _fc()
            gather = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor
            return gather(x, 0, self.group)
        import torch.distributed as dist

        out = x.new_empty((self.world * x.shape[0], *x.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, x, group=self.group)
        return out

    def _reduce(self, x: torch.Tensor, op: str) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return _fc().all_reduce(x, op, self.group)
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out, op=getattr(dist.ReduceOp, op.upper()), group=self.group)
        return out

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.world == 1 else self._reduce(x, "sum")

    def all(self, flag: torch.Tensor) -> torch.Tensor:
        """A bool that is true only if it is true on every process."""
        if self.world == 1:
            return flag
        return self._reduce(flag.to(torch.float32), "min") > 0.5

    def mean_tree(self, tree):
        """The mean over processes of every leaf of ``tree``: one flat buffer, one all-reduce."""
        if self.world == 1:
            return tree
        leaves, spec = pytree.tree_flatten(tree)
        flat = torch.cat([leaf.reshape(-1) for leaf in leaves])
        flat = self._reduce(flat, "sum") / self.world
        out, at = [], 0
        for leaf in leaves:
            out.append(flat[at : at + leaf.numel()].view_as(leaf))
            at += leaf.numel()
        return pytree.tree_unflatten(out, spec)

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """``(x - mean) / (std + eps)`` with the mean and (Bessel-corrected) std of every
        process's ``x`` together: PPO's per-minibatch advantage normalization, made global."""
        n = x.numel() * self.world
        mean = self.sum(x.sum()) / n
        var = self.sum((x - mean).square().sum()) / (n - 1)
        return (x - mean) / (var.sqrt() + eps)


def init_shards(count: int, num_envs: int, device: torch.device) -> Shards:
    """The shards of this process: ``torchrun``'s ``WORLD_SIZE`` / ``RANK`` (a process group is
    started: gloo on CPU, NCCL on CUDA), or one process. One-line ``ValueError`` when ``count``
    is not a multiple of the world size or does not divide ``num_envs``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if count < 1 or num_envs % count:
        raise ValueError(f"--shards {count} must be >= 1 and divide --num-envs {num_envs}")
    if count % world:
        raise ValueError(
            f"--shards {count} is not a multiple of the {world} processes torchrun started"
        )
    if world == 1:
        return Shards(count=count)
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        _init_process_group("nccl" if device.type == "cuda" else "gloo", world)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Shards(
        count=count, rank=dist.get_rank(), world=world, group=dist.group.WORLD, owned=owned
    )


def close_shards(shards: Shards) -> None:
    """End the process group that ``init_shards`` started. A group left to the interpreter's
    exit tears its gloo threads down mid-destruction, and a worker then dies with SIGABRT
    ("terminate called without an active exception") after its run has finished."""
    if shards.world > 1 and shards.owned:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _init_process_group(backend: str, world: int) -> None:
    """``init_process_group`` on torchrun's store under a prefix of its own per restart: after
    ``--max-restarts`` restarts the workers, the store still holds the killed group's
    addresses, which a new group without its own prefix can read and hang on."""
    from datetime import timedelta

    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_store,
        timeout=timedelta(minutes=5),
    )
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"tdppo/restart-{restart}/", store)
    dist.init_process_group(backend=backend, store=prefixed, rank=rank, world_size=world)


def shard_moments(shards: Shards) -> Callable | None:
    """The batch-moments function of the normalizers for ``shards`` (``None``: the plain
    whole-batch moments of one shard in one process).

    ``moments(x, event_ndim, mask, finite) -> (mean, var, count, finite)``: ``x`` ``[N, *shape]``
    holds this process's shards in order (``N`` divisible by ``shards.local``); each shard's
    two-pass float64 moments are taken alone, gathered in shard order and merged left to right
    (Chan et al.); ``finite`` is made global.
    """
    if shards.count == 1:
        return None

    def moments(x, event_ndim, mask, finite):
        rows = x.shape[0] // shards.local
        parts = []
        for s in range(shards.local):
            xs = x[s * rows : (s + 1) * rows]
            ms = None if mask is None else mask[s * rows : (s + 1) * rows]
            parts.append(stats._batch_moments(xs, event_ndim, ms))
        # one gather per call: [mean | var | count | finite] of every local shard, float64
        shape = parts[0][0].shape
        flag = finite.to(torch.float64).reshape(1)
        rows = [torch.cat([m.reshape(-1), v.reshape(-1), c.reshape(1), flag]) for m, v, c in parts]
        wire = shards.gather(torch.stack(rows))  # [S, 2 * numel + 2]
        n = shape.numel()
        mean, var = wire[:, :n].reshape(-1, *shape), wire[:, n : 2 * n].reshape(-1, *shape)
        count, finite = wire[:, 2 * n], wire[:, 2 * n + 1].min() > 0.5
        m, v, c = mean[0], var[0], count[0]
        for s in range(1, shards.count):
            m, v, c = stats._merge_guarded(m, v, c, mean[s], var[s], count[s])
        return m, v, c, finite

    return moments


def env_batched_keys(state) -> list[tuple[str, ...]]:
    """The leaves of ``state`` that hold one row per env: the env subtree's batched leaves
    (carry and per-env buffers) and the transforms' per-env ``acc`` (the reward return)."""
    keys = [("env", *k) if isinstance(k, tuple) else ("env", k)
            for k, v in state["env"].items(True, True) if v.ndim >= 1]  # fmt: skip
    for k in state["transforms"].keys(True, True):
        k = k if isinstance(k, tuple) else (k,)
        if k[-1] == ENV_BATCHED:
            keys.append(("transforms", *k))
    return keys


def gather_envs(state, shards: Shards):
    """``state`` in the single-process layout: every env-batched leaf gathered from all
    processes in rank order (a collective: every process calls it; all get the result)."""
    if shards.world == 1:
        return state
    out = state.copy()
    for key in env_batched_keys(state):
        leaf = state.get(key)
        wire = leaf.to(torch.uint8) if leaf.dtype == torch.bool else leaf
        full = shards.gather(wire)
        full = full.to(leaf.dtype) if leaf.dtype == torch.bool else full.clone()
        _set_leaf(out, key, full)
    return out


def slice_envs(state, shards: Shards, num_envs: int):
    """This process's part of a single-process-layout ``state`` (e.g. a loaded checkpoint)."""
    if shards.world == 1:
        return state
    lo, n = shards.env_offset(num_envs), shards.local_envs(num_envs)
    out = state.copy()
    for key in env_batched_keys(state):
        _set_leaf(out, key, state.get(key)[lo : lo + n].clone())
    return out


def _set_leaf(td, key: tuple[str, ...], value: torch.Tensor) -> None:
    """Replace one leaf, giving its sub-TensorDicts a batch size that fits (env subtrees have
    batch ``[]`` in the state, so a leaf may change its leading size freely)."""
    parent = td
    for k in key[:-1]:
        child = parent.get(k)
        if child.batch_size:
            child = child.clone(recurse=False)
            child.batch_size = []
        else:
            child = child.copy()
        parent.set(k, child)
        parent = child
    parent.set(key[-1], value)


def any_process(flag: bool, shards: Shards) -> bool:
    """Whether ``flag`` is true on any process (eager; for host-side decisions such as a stop
    requested by a signal, so that every process stops after the same update)."""
    if shards.world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend(shards.group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=shards.group)
    return bool(t.item() > 0)


def barrier(shards: Shards) -> None:
    if shards.world > 1:
        import torch.distributed as dist

        dist.barrier(group=shards.group)
