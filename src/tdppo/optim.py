"""Functional Adam over TensorDicts, optax style: ``adam_init`` / ``adam_update`` pure functions.

The optimizer state ``{"step", "exp_avg", "exp_avg_sq"}`` holds two moment trees that mirror
the params tree, so it lives in the training state next to the params, checkpoints with them,
and stacks / vmaps with them (one optimizer state per population member).

The math is ``torch.optim.Adam``'s (bias correction as torch does it, ``eps`` added after the
bias-corrected square root) and the global-norm clipping is ``torch.nn.utils.clip_grad_norm_``'s
(``max_norm / (norm + 1e-6)``, capped at 1). ``lr`` and ``max_grad_norm`` may be 0-d tensors, so a
schedule changes a value, never a compiled graph. Nothing here reads a tensor on the host.

Trees may be TensorDicts or nested dicts of tensors (any ``torch.utils._pytree`` tree); outputs
have the inputs' type. Inside compiled code nested dicts trace much faster than TensorDicts, which
is why :func:`tdppo.ppo.make_update` uses them there. All leaves are handled one by one (no
``torch._foreach_*``: those have no ``vmap`` batching rule).

>>> import torch
>>> from tensordict import TensorDict
>>> params = TensorDict(w=torch.ones(3))
>>> opt = adam_init(params)
>>> grads = TensorDict(w=torch.tensor([1.0, -1.0, 0.0]))
>>> params, opt, norm = adam_update(grads, opt, params, lr=torch.tensor(0.1))
>>> params["w"]
tensor([0.9000, 1.1000, 1.0000])
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.utils._pytree as pytree
from tensordict import TensorDictBase

__all__ = ["adam_init", "adam_update", "clip_by_global_norm", "global_norm"]

Tree = TypeVar("Tree", TensorDictBase, dict[str, Any])

_KEYS = ("step", "exp_avg", "exp_avg_sq")
# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
_CLIP_EPS = 1e-6


def adam_init(params: Tree) -> Tree:
    """Fresh Adam state for ``params`` (a TensorDict or a nested dict of tensors).

    Returns the same container type with ``step`` (0-d int64 on the params' device, 0 before
    the first update), ``exp_avg`` and ``exp_avg_sq`` (zeros, same tree, shapes and dtypes as
    ``params``).
    """
    leaves, spec = pytree.tree_flatten(params)
    step = torch.zeros((), dtype=torch.int64, device=leaves[0].device)
    exp_avg = pytree.tree_unflatten([torch.zeros_like(p.detach()) for p in leaves], spec)
    exp_avg_sq = pytree.tree_unflatten([torch.zeros_like(p.detach()) for p in leaves], spec)
    state = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if isinstance(params, TensorDictBase):
        return params.empty(recurse=False).update(state)
    return state


def global_norm(tree: Tree) -> torch.Tensor:
    """The 2-norm of all leaves of ``tree`` taken together (0-d tensor), computed as
    ``torch.nn.utils.clip_grad_norm_`` does: the norm of the per-leaf norms."""
    norms = [torch.linalg.vector_norm(g, 2.0) for g in pytree.tree_leaves(tree)]
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


def clip_by_global_norm(grads: Tree, max_norm: float | torch.Tensor) -> tuple[Tree, torch.Tensor]:
    """Scale ``grads`` so that their global norm is at most ``max_norm``.

    Same math as ``torch.nn.utils.clip_grad_norm_``: every leaf is multiplied by
    ``min(1, max_norm / (norm + 1e-6))``. Returns ``(clipped grads, norm before clipping)``;
    the norm is a 0-d tensor. No host sync: the scale is applied even when it is 1.
    """
    leaves, spec = pytree.tree_flatten(grads)
    norm = global_norm(grads)
    coef = torch.clamp(max_norm / (norm + _CLIP_EPS), max=1.0)
    return pytree.tree_unflatten([g * coef for g in leaves], spec), norm


def adam_update(
    grads: Tree,
    opt_state: Tree,
    params: Tree,
    lr: float | torch.Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-5,
    max_grad_norm: float | torch.Tensor | None = None,
) -> tuple[Tree, Tree, torch.Tensor]:
    """One Adam step (``torch.optim.Adam`` math; ``eps`` defaults to CleanRL's 1e-5).

    Args:
        grads: gradients, same tree as ``params``.
        opt_state: from :func:`adam_init` or a previous call.
        params: current parameters (not modified; the result is detached from them).
        lr: learning rate, a float or a 0-d tensor (a tensor keeps schedules out of the graph).
        betas: ``(beta1, beta2)``.
        eps: added to the bias-corrected ``sqrt(exp_avg_sq)``.
        max_grad_norm: if given (float or 0-d tensor), grads are first clipped to this global
            norm with :func:`clip_by_global_norm`.

    Returns:
        ``(new_params, new_opt_state, grad_norm)`` in the inputs' container types;
        ``grad_norm`` is the global norm of the incoming (unclipped) grads, a 0-d tensor.
    """
    beta1, beta2 = betas
    if max_grad_norm is None:
        grad_norm = global_norm(grads)
    else:
        grads, grad_norm = clip_by_global_norm(grads, max_grad_norm)
    p_leaves, spec = pytree.tree_flatten(params)
    g_leaves = pytree.tree_leaves(grads)
    m_leaves = pytree.tree_leaves(opt_state["exp_avg"])
    v_leaves = pytree.tree_leaves(opt_state["exp_avg_sq"])
    if not len(p_leaves) == len(g_leaves) == len(m_leaves) == len(v_leaves):
        raise ValueError("grads, params and optimizer state must have the same tree structure")

    step = opt_state["step"] + 1
    # torch computes the bias corrections in double precision on the host; float64 here.
    step64 = step.to(torch.float64)
    bias_correction1 = 1.0 - torch.pow(beta1, step64)
    bias_correction2_sqrt = torch.sqrt(1.0 - torch.pow(beta2, step64))
    dtype = p_leaves[0].dtype
    step_size = (lr / bias_correction1).to(dtype)
    bc2_sqrt = bias_correction2_sqrt.to(dtype)

    new_p, new_m, new_v = [], [], []
    for p, g, m, v in zip(p_leaves, g_leaves, m_leaves, v_leaves):
        m = torch.lerp(m, g, 1.0 - beta1)
        v = torch.addcmul(v * beta2, g, g, value=1.0 - beta2)
        denom = v.sqrt() / bc2_sqrt + eps
        new_p.append(p.detach() - step_size * m / denom)  # addcdiv's order: (value * m) / d
        new_m.append(m)
        new_v.append(v)
    state = {
        "step": step,
        "exp_avg": pytree.tree_unflatten(new_m, spec),
        "exp_avg_sq": pytree.tree_unflatten(new_v, spec),
    }
    # Entries other than the three Adam ones (an lr schedule, say) pass through unchanged.
    if isinstance(opt_state, TensorDictBase):
        state = opt_state.exclude(*_KEYS).update(state)
    else:
        state = {**opt_state, **state}
    return pytree.tree_unflatten(new_p, spec), state, grad_norm
