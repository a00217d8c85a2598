"""Running mean / variance / count as pure functions over a float64 TensorDict.

The statistics are a ``TensorDict`` with ``batch_size=[]`` and three float64 leaves:

- ``mean``  ``[*shape]``
- ``var``   ``[*shape]`` (population variance, i.e. ``M2 / count``)
- ``count`` ``[]``

``init`` -> ``update`` (a batch) / ``merge`` (two states) -> ``normalize``, in the style of
optax's ``init``/``update`` pairs and Brax's ``running_statistics``. Every function returns new
tensors and never mutates its inputs. Merging follows Chan, Golub and LeVeque's parallel
algorithm; the batch moments are computed in float64 with a two-pass variance (mean first,
then the mean of squared deviations), so a stream offset by 1e6 loses no precision, and a
float64 count stays exact up to 2**53 samples.

Everything is branch-free (no boolean indexing, no ``.item()``, no Python ``if`` on tensor
values), so the functions run unchanged under ``torch.compile`` and ``torch.vmap``.

>>> import torch
>>> from tdppo import stats
>>> s = stats.init((3,))
>>> s = stats.update(s, torch.randn(8, 16, 3))  # two leading batch dims
>>> float(s["count"]) == 128 + 1e-4
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict

__all__ = ["init", "update", "merge", "normalize", "INITIAL_COUNT"]

INITIAL_COUNT = 1e-4
"""Pseudo-count of the prior (mean 0, var 1), as gymnasium's ``RunningMeanStd(epsilon=1e-4)``."""

_F64 = torch.float64


def init(
    shape: Sequence[int] | torch.Size = (), device: torch.device | str | None = None
) -> TensorDict:
    """Fresh statistics: mean 0, var 1, count 1e-4 (gymnasium's ``RunningMeanStd``).

    Args:
        shape: the event shape of one sample, e.g. ``(obs_dim,)``; ``()`` for scalars.
        device: where the tensors live.

    Returns:
        ``TensorDict(mean=[*shape], var=[*shape], count=[])``, float64, ``batch_size=[]``.
    """
    shape = torch.Size(shape)
    return TensorDict(
        mean=torch.zeros(shape, dtype=_F64, device=device),
        var=torch.ones(shape, dtype=_F64, device=device),
        count=torch.full((), INITIAL_COUNT, dtype=_F64, device=device),
        batch_size=[],
        device=device,
    )


def _merge_moments(
    mean_a: torch.Tensor,
    var_a: torch.Tensor,
    count_a: torch.Tensor,
    mean_b: torch.Tensor,
    var_b: torch.Tensor,
    count_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan et al. merge of two (mean, var, count) triples, unguarded.

    ``mean_*``/``var_*`` are ``[*shape]``, ``count_*`` are ``[]``, all float64. Meaningful only
    when both counts are positive (NaN when both are 0); callers select around empty sides.
    """
    total = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / total)
    m2 = var_a * count_a + var_b * count_b + delta.square() * (count_a * count_b / total)
    return mean, m2 / total, total


def _merge_guarded(
    mean_a: torch.Tensor,
    var_a: torch.Tensor,
    count_a: torch.Tensor,
    mean_b: torch.Tensor,
    var_b: torch.Tensor,
    count_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_merge_moments` where an empty side (count 0) passes the other through bit-for-bit
    (``var * n / n`` is not always exactly ``var``), selected with ``torch.where``."""
    mean, var, total = _merge_moments(mean_a, var_a, count_a, mean_b, var_b, count_b)
    a_empty, b_empty = count_a <= 0, count_b <= 0
    mean = torch.where(b_empty, mean_a, torch.where(a_empty, mean_b, mean))
    var = torch.where(b_empty, var_a, torch.where(a_empty, var_b, var))
    return mean, var, total


def merge(a: TensorDict, b: TensorDict) -> TensorDict:
    """Statistics of the union of the samples summarized by ``a`` and ``b``.

    Commutative and (up to rounding) associative, so shards or processes can be combined in
    any grouping. ``a`` and ``b`` must have the same event shape. An empty side (count 0)
    returns the other unchanged.

    Returns:
        a new ``TensorDict(mean, var, count)`` like the inputs.
    """
    mean, var, count = _merge_guarded(
        a["mean"], a["var"], a["count"], b["mean"], b["var"], b["count"]
    )
    return TensorDict(mean=mean, var=var, count=count, batch_size=[], device=a.device)


def _batch_moments(
    x: torch.Tensor, event_ndim: int, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-pass float64 mean / population variance / count over the leading batch dims.

    Args:
        x: ``[*B, *shape]`` with ``len(shape) == event_ndim``.
        mask: optional bool ``[*B]``; rows where it is false are ignored (their values may be
            anything, NaN included: they are replaced by 0 before any arithmetic).

    Returns:
        ``mean [*shape]``, ``var [*shape]``, ``count []`` (float64; count may be 0, then
        mean and var are 0).
    """
    x = x.to(_F64)
    batch_ndim = x.ndim - event_ndim
    x = x.reshape((-1,) + tuple(x.shape[batch_ndim:]))  # [N, *shape]
    if mask is None:
        count = torch.full((), x.shape[0], dtype=_F64, device=x.device)
        mean = x.mean(0)
        var = (x - mean).square().mean(0)
        return mean, var, count
    w = mask.reshape((-1,) + (1,) * event_ndim)  # [N, 1...]
    count = mask.reshape(-1).to(_F64).sum()
    safe = count.clamp_min(1.0)
    zero = torch.zeros((), dtype=_F64, device=x.device)
    mean = torch.where(w, x, zero).sum(0) / safe
    var = torch.where(w, (x - mean).square(), zero).sum(0) / safe
    return mean, var, count


def update(stats: TensorDict, x: torch.Tensor, mask: torch.Tensor | None = None) -> TensorDict:
    """Merge a batch of samples into the statistics.

    Args:
        stats: ``TensorDict(mean=[*shape], var=[*shape], count=[])`` (float64).
        x: ``[*B, *shape]`` samples, any dtype, any number of leading batch dims ``B``
            (including none: one sample).
        mask: optional bool ``[*B]``; only rows where it is true are counted. A mask that
            selects nothing returns the statistics unchanged (bit-for-bit).

    Returns:
        new statistics (float64), inputs untouched.

    Raises:
        ValueError: if the trailing dims of ``x`` are not ``shape`` or ``mask`` is not ``[*B]``
            (static shape checks only; nothing data-dependent).
    """
    shape = stats["mean"].shape
    event_ndim = len(shape)
    if x.ndim < event_ndim or tuple(x.shape[x.ndim - event_ndim :]) != tuple(shape):
        raise ValueError(
            f"stats.update: expected samples of shape [*batch, {', '.join(map(str, shape))}], "
            f"received {tuple(x.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(x.shape[: x.ndim - event_ndim]):
        raise ValueError(
            f"stats.update: expected a mask of shape {tuple(x.shape[: x.ndim - event_ndim])} "
            f"(the batch dims of x), received {tuple(mask.shape)}"
        )
    mean_b, var_b, count_b = _batch_moments(x, event_ndim, mask)
    mean, var, count = _merge_guarded(
        stats["mean"], stats["var"], stats["count"], mean_b, var_b, count_b
    )
    return TensorDict(mean=mean, var=var, count=count, batch_size=[], device=stats.device)


def normalize(
    stats: TensorDict, x: torch.Tensor, eps: float = 1e-8, clip: float | None = None
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)``, computed in float64, optionally clamped.

    Args:
        stats: ``TensorDict(mean=[*shape], var=[*shape], count=[])``.
        x: ``[*B, *shape]``.
        eps: added to the variance under the square root (gymnasium: 1e-8).
        clip: if given, the result is clamped to ``[-clip, clip]``.

    Returns:
        ``[*B, *shape]`` in ``x.dtype`` (the default float dtype if ``x`` is not floating).
    """
    out_dtype = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()
    y = (x.to(_F64) - stats["mean"]) / torch.sqrt(stats["var"] + eps)
    if clip is not None:
        y = y.clamp(-clip, clip)
    return y.to(out_dtype)
