"""The PPO math as pure functions: GAE, the clipped loss, and the epochs x minibatches update.

Nothing here keeps state between calls: params, optimizer state, the batch, a
:mod:`tdppo.random` key and the hyperparameters go in; new params, optimizer state and metrics
come out. Hyperparameters travel as a TensorDict of 0-d float tensors (``hp``), so changing a
value (a learning-rate schedule, say) never recompiles and a population can ``vmap`` over them:

- ``clip_eps``: PPO ratio clip (also the value clip when ``clip_vloss``);
- ``vf_coef``: weight of the value loss; ``ent_coef``: weight of the entropy bonus;
- ``lr``, ``adam_eps``, ``max_grad_norm``: Adam learning rate and epsilon, global gradient-norm
  clip (update only).

The loss is CleanRL's (``ppo_continuous_action.py``): per-minibatch advantage normalization
``(A - mean) / (std + 1e-8)``, ``max(-A r, -A clip(r))``, value loss
``0.5 * max((V - R)^2, (V_clipped - R)^2)``, ``loss = pg - ent_coef * H + vf_coef * v``. In
TorchRL's ``ClipPPOLoss`` terms: ``clip_epsilon=clip_eps``, ``entropy_coeff=ent_coef``,
``critic_coeff=0.5 * vf_coef``, ``loss_critic_type="l2"``, ``clip_value=clip_vloss``,
``normalize_advantage=norm_adv`` (TorchRL divides by ``max(std, 1e-6)`` instead of
``std + 1e-8``).

>>> import torch
>>> reward, value = torch.ones(1, 3, 1), torch.zeros(1, 3, 1)
>>> never = torch.zeros(1, 3, 1, dtype=torch.bool)
>>> gae(reward, value, value, never, never, gamma=0.5, lam=1.0)[0].flatten()
tensor([1.7500, 1.5000, 1.0000])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from tensordict import TensorDict, TensorDictBase
from torchrl.modules import ProbabilisticActor, ValueOperator

from tdppo import jit, nets
from tdppo import random as tr
from tdppo.distributed import Shards
from tdppo.optim import adam_update

__all__ = [
    "gae", "ppo_loss", "make_minibatch_step", "make_update", "METRICS", "BATCH_KEYS", "UPDATE_HP",
]  # fmt: skip

METRICS = ("loss_policy", "loss_value", "entropy", "approx_kl", "clip_fraction", "grad_norm")
"""Keys of the metrics TensorDict that ``update`` returns (0-d tensors, minibatch means)."""

UPDATE_HP = ("lr", "clip_eps", "vf_coef", "ent_coef", "max_grad_norm", "adam_eps")
"""The hyperparameters the update reads: 0-d (or ``[M]``) float tensors."""

BATCH_KEYS = (
    "observation",
    "action",
    nets.LOG_PROB_KEY,
    "advantage",
    "value_target",
    "state_value",
)

Tree = TensorDictBase | dict[str, Any]
Step = Callable[[Tree, Tree, Tree, Tree], tuple[Tree, Tree, dict[str, torch.Tensor]]]
Update = Callable[
    [Tree, Tree, TensorDictBase, torch.Tensor, Tree], tuple[Tree, Tree, TensorDictBase]
]


def gae(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float | torch.Tensor,
    lam: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over ``[*B, T, 1]`` tensors (time at dim -2).

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)`` and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``: a terminated step does not
    bootstrap; a truncated one (``done & ~terminated``) bootstraps from ``next_value``, the value
    of the final, pre-reset observation; ``done`` cuts the recursion. After the last step the
    recursion starts from 0 (``next_value`` of the last step bootstraps it).

    Args:
        reward, value, next_value: float ``[*B, T, 1]``.
        terminated, done: bool (or 0/1 float) ``[*B, T, 1]``.
        gamma, lam: python floats or 0-d tensors.

    Returns:
        ``(advantage, value_target)`` ``[*B, T, 1]``, ``value_target = advantage + value``.

    Vectorized over the batch, no host sync. Small batches (and compiled code) use a
    ``log2(T)``-step parallel scan of the linear recurrence; large ones a reverse loop over ``T``
    (fewer flops). The choice depends on shapes only; both agree to float32 rounding.
    """
    not_terminated = 1.0 - terminated.to(reward.dtype)
    not_done = 1.0 - done.to(reward.dtype)
    delta = reward + gamma * not_terminated * next_value - value
    discount = (gamma * lam) * not_done
    if torch.compiler.is_compiling() or delta.numel() <= _SCAN_MAX_NUMEL:
        advantage = _reverse_scan(delta, discount)
    else:
        advantage = _reverse_loop(delta, discount)
    return advantage, advantage + value


# Measured on 1 CPU thread, T=256: the scan wins up to ~512 envs, the loop beyond.
_SCAN_MAX_NUMEL = 1 << 17


def _reverse_loop(delta: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
    """``A_t = delta_t + discount_t * A_{t+1}`` (``A_T = 0``), one step per iteration."""
    deltas, discounts = delta.unbind(-2), discount.unbind(-2)
    running = torch.zeros_like(deltas[-1])
    out = []
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + discounts[t] * running
        out.append(running)
    return torch.stack(out[::-1], dim=-2)


def _reverse_scan(delta: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
    """The same recurrence by recursive doubling (Hillis-Steele): after the step with shift
    ``s``, ``delta_t`` holds the sum over ``[t, t + 2s)`` and ``discount_t`` the product of the
    discounts over that window (0 past the end)."""
    steps = delta.shape[-2]
    shift = 1
    while shift < steps:
        head_d, tail_d = delta[..., :-shift, :], delta[..., shift:, :]
        head_c, tail_c = discount[..., :-shift, :], discount[..., shift:, :]
        delta = torch.cat([head_d + head_c * tail_d, delta[..., -shift:, :]], dim=-2)
        discount = torch.cat([head_c * tail_c, torch.zeros_like(discount[..., -shift:, :])], -2)
        shift *= 2
    return delta


def ppo_loss(
    actor: ProbabilisticActor,
    critic: ValueOperator,
    params: Tree,
    batch: Tree,
    hp: Tree,
    clip_vloss: bool = True,
    norm_adv: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CleanRL's PPO loss on one minibatch (see the module docstring for the TorchRL mapping).

    Args:
        actor, critic: tdppo modules (from :mod:`tdppo.nets`); only their structure is used.
        params: ``{"policy": from_module(actor), "value": from_module(critic)}`` layout, as a
            TensorDict or nested dict.
        batch: minibatch of ``M`` samples (TensorDict or dict) with ``observation``
            ``[M, obs_dim]``, ``action``, ``sample_log_prob`` ``[M]`` (behaviour policy),
            ``advantage``, ``value_target`` and ``state_value`` (old value) ``[M, 1]``.
        hp: 0-d float tensors ``clip_eps``, ``vf_coef``, ``ent_coef``.
        clip_vloss: clip the value update around the old value (CleanRL's ``clip_vloss``).
        norm_adv: normalize advantages over the minibatch.

    Returns:
        ``(loss, metrics)``: the 0-d total loss and a dict of detached 0-d tensors
        ``loss_policy``, ``loss_value`` (before ``vf_coef``), ``entropy``, ``approx_kl``
        (``((r - 1) - log r).mean()``), ``clip_fraction`` (share of ``|r - 1| > clip_eps``).
    """
    clip_eps, vf_coef, ent_coef = hp["clip_eps"], hp["vf_coef"], hp["ent_coef"]
    obs = batch["observation"]
    dp = nets.dist_params_dict(actor, params["policy"], obs)
    new_log_prob = nets.log_prob(dp, batch["action"])
    log_ratio = new_log_prob - batch[nets.LOG_PROB_KEY]
    ratio = log_ratio.exp()

    advantage = batch["advantage"].reshape(ratio.shape)
    if norm_adv:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    pg_loss = torch.maximum(
        -advantage * ratio, -advantage * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    ).mean()

    new_value = nets.value(critic, params["value"], obs)
    target = batch["value_target"]
    v_loss = (new_value - target) ** 2
    if clip_vloss:
        old_value = batch["state_value"]
        clipped = old_value + torch.clamp(new_value - old_value, -clip_eps, clip_eps)
        v_loss = torch.maximum(v_loss, (clipped - target) ** 2)
    v_loss = 0.5 * v_loss.mean()

    ent = nets.entropy(dp).mean()
    loss = pg_loss - ent_coef * ent + vf_coef * v_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_eps).to(ratio.dtype).mean()
    metrics = {
        "loss_policy": pg_loss.detach(),
        "loss_value": v_loss.detach(),
        "entropy": ent.detach(),
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }
    return loss, metrics


def make_minibatch_step(
    actor: ProbabilisticActor,
    critic: ValueOperator,
    *,
    clip_vloss: bool = True,
    norm_adv: bool = True,
    shards: Shards | None = None,
) -> Step:
    """``step(params, opt_state, minibatch, hp) -> (params, opt_state, metrics)``.

    Gradients of :func:`ppo_loss` by ``torch.func.grad``, then :func:`tdppo.optim.adam_update`
    with ``hp["lr"]``, ``hp["adam_eps"]`` and ``hp["max_grad_norm"]``; ``metrics`` is the loss's
    dict plus ``grad_norm`` (before clipping). Trees may be TensorDicts or nested dicts (the outputs
    follow the inputs). Pure and free of data-dependent Python control flow: it compiles to one
    graph and ``torch.vmap``-s over a leading member dimension of ``params`` / ``opt_state`` /
    ``hp`` (and of the minibatch, or not).

    With ``shards`` over several processes (:class:`tdppo.distributed.Shards`) the minibatch is
    this process's part of a global one: advantages are normalized with the global moments,
    the gradients are averaged over processes (one flat all-reduce) before clipping and Adam,
    and the metrics are averaged too, so every process takes the same step.
    """
    parallel = shards is not None and shards.world > 1
    local_norm = norm_adv and not parallel

    def loss_fn(params, minibatch, hp):
        return ppo_loss(actor, critic, params, minibatch, hp, clip_vloss, local_norm)

    grad_fn = torch.func.grad(loss_fn, has_aux=True)

    def step(params, opt_state, minibatch, hp):
        if parallel and norm_adv:
            minibatch = {**minibatch, "advantage": shards.normalize(minibatch["advantage"])}
        grads, metrics = grad_fn(params, minibatch, hp)
        if parallel:
            grads = shards.mean_tree(grads)
            metrics = shards.mean_tree(metrics)
        params, opt_state, grad_norm = adam_update(
            grads,
            opt_state,
            params,
            hp["lr"],
            eps=hp["adam_eps"],
            max_grad_norm=hp["max_grad_norm"],
        )
        return params, opt_state, {**metrics, "grad_norm": grad_norm}

    return step


def _plain(tree: Tree) -> dict:
    """A nested dict of detached tensors (TensorDicts trace slowly under ``torch.compile``)."""
    if isinstance(tree, TensorDictBase):
        tree = tree.to_dict()
    return pytree.tree_map(torch.Tensor.detach, tree)


def _like(template: Tree, tree: dict) -> Tree:
    """``tree`` in the container type (TensorDict batch sizes, key order) of ``template``."""
    if isinstance(template, TensorDictBase):
        return template.empty(recurse=True).update(tree).select(*template.keys())
    return tree


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` along the sample dim, ``index`` ``[B]`` (or ``[M, B]`` per member: plain
    indexing rather than an eager ``torch.vmap``, whose argument flattening would change a
    tensordict memo that compiled graphs guard on, and recompile them once)."""
    if index.dim() == 1:
        return values[index]
    rows = torch.arange(index.shape[0], device=index.device).unsqueeze(-1)
    return values[rows, index]


def _shard_permutation(shards: Shards, minibatches: int) -> Callable:
    """``permute(key, size)`` for a batch of ``shards.local`` equal shards: each shuffled by its
    global shard id, then interleaved so that every minibatch takes a slice of each shard."""

    def permute(key: torch.Tensor, size: int) -> torch.Tensor:
        n = size // shards.local
        ids = torch.arange(shards.first, shards.first + shards.local, device=key.device)
        perm = tr.permutation(tr.fold_in(key.unsqueeze(-1), ids), n)  # [*K, local, n]
        perm = perm + n * torch.arange(shards.local, device=key.device).unsqueeze(-1)
        lead = perm.shape[:-2]
        perm = perm.view(*lead, shards.local, minibatches, n // minibatches).transpose(-3, -2)
        return perm.reshape(*lead, -1)

    return permute


def make_update(
    actor: ProbabilisticActor,
    critic: ValueOperator,
    *,
    epochs: int,
    minibatches: int,
    clip_vloss: bool = True,
    norm_adv: bool = True,
    compile: bool = True,
    mode: str | None = None,
    members: bool = False,
    shards: Shards | None = None,
) -> Update:
    """Build ``update(params, opt_state, batch, key, hp) -> (params, opt_state, metrics)``.

    ``batch`` is the flattened rollout (TensorDict or dict with :data:`BATCH_KEYS`, samples
    ``[B]``; other keys are ignored); ``B`` must be divisible by ``minibatches``. For epoch
    ``e`` the samples are shuffled by ``tdppo.random.permutation(fold_in(key, e), B)`` (``key``:
    a 0-d :mod:`tdppo.random` key) and cut into ``minibatches`` equal slices; each slice is one
    :func:`make_minibatch_step` step, compiled with :func:`tdppo.jit.compiled` when ``compile``
    (``mode`` is torch.compile's, e.g. ``"reduce-overhead"`` for CUDA graphs). ``hp``: 0-d float
    tensors ``clip_eps``, ``vf_coef``, ``ent_coef``, ``lr``, ``max_grad_norm``, ``adam_eps``
    (new values never recompile).

    ``members=True``: every input has a leading member dimension ``M`` (``batch`` ``[M, B]``,
    ``key`` and each hyperparameter ``[M]``) and the same minibatch step runs under
    ``torch.vmap``: each member its own shuffles, gradient clipping and hyperparameters.

    Inputs are not modified: the returned ``params`` / ``opt_state`` are new tensors in the
    inputs' container types.

    ``shards`` with ``count > 1``: the batch holds this process's ``shards.local`` shards, one
    after the other; each shard is shuffled alone, by ``permutation(fold_in(fold_in(key, e),
    s), n)`` for global shard ``s``, and minibatch ``i`` is every local shard's ``i``-th slice
    (the minibatch step then averages over processes).

    ``metrics`` is a TensorDict (batch ``[]`` or ``[M]``) of :data:`METRICS` averaged over all
    minibatch steps (read them on the host only when logging).
    """
    member_step = make_minibatch_step(
        actor, critic, clip_vloss=clip_vloss, norm_adv=norm_adv, shards=shards
    )
    permute = tr.permutation
    if shards is not None and shards.count > 1:
        permute = _shard_permutation(shards, minibatches)
    step = member_step
    if members:

        def population_minibatch_step(params, opt_state, minibatch, hp):
            return torch.vmap(member_step)(params, opt_state, minibatch, hp)

        step = population_minibatch_step
    if compile:
        step = jit.compiled(step, mode=mode)
    sample_dim = 1 if members else 0

    def update(params, opt_state, batch, key, hp):
        data = {k: batch[k] for k in BATCH_KEYS}
        size = data["observation"].shape[sample_dim]
        mb_size = size // minibatches
        if mb_size * minibatches != size:
            raise ValueError(f"batch of {size} does not split into {minibatches} minibatches")
        p, o, h = _plain(params), _plain(opt_state), {k: hp[k] for k in UPDATE_HP}
        # every epoch's shuffle at once (epoch e: permute(fold_in(key, e), size)), one gather per
        # key for all epochs, then the minibatches as views (one split per key)
        epoch_keys = tr.fold_in(key.unsqueeze(-1), torch.arange(epochs, device=key.device))
        perm = permute(epoch_keys, size).flatten(-2)  # [*M, epochs * size], epoch after epoch
        slices = {k: _take(v, perm).split(mb_size, sample_dim) for k, v in data.items()}
        minibatch_list = [{k: v[i] for k, v in slices.items()} for i in range(epochs * minibatches)]
        # the minibatch steps: parameters and Adam's state fed forward, metrics stacked
        (p, o, _), per_step = jit.fold(step, (p, o, None, h), (0, 1), 2, minibatch_list, 2)
        means = {k: per_step[k].mean(0) for k in METRICS}  # over all minibatch steps
        return _like(params, p), _like(opt_state, o), TensorDict(means, batch_size=key.shape)

    update.minibatch_step = step
    return update
