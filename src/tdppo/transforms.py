"""Running observation / reward normalizers as TorchRL transforms whose whole state is buffers.

Semantics are gymnasium's vector ``NormalizeObservation`` / ``NormalizeReward`` (statistics in
float64, count starting at 1e-4, updated once per vector step with the whole batch, then
applied, epsilon 1e-8 under the square root). Every piece of state (statistics, per-env
discounted return, ``gamma``, the ``frozen`` flag, the count of skipped non-finite batches) is a
registered buffer, so ``TensorDict.from_module(env.transform)`` gathers all of it and
``load_state_dict`` restores it; a state dict missing any of it is an error naming the key.

The arithmetic lives in two pure, branch-free functions, :func:`obs_norm_step` and
:func:`reward_norm_step`, over a ``TensorDict`` with exactly the keys of
``TensorDict.from_module(transform)``; a compiled rollout can call them directly. The
transforms call them and copy the results back into their buffers in place (so views gathered
with ``from_module`` stay live).

>>> import torch
>>> from tensordict import TensorDict
>>> from tdppo.transforms import RunningObservationNorm
>>> t = RunningObservationNorm(shape=(3,))
>>> td = t(TensorDict(observation=torch.randn(4, 3) + 10.0, batch_size=[4]))
>>> float(t.count)  # 4 samples counted once, on top of the 1e-4 prior
4.0001
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data.tensor_specs import Bounded, Composite, TensorSpec, Unbounded
from torchrl.envs.transforms import Compose, ObservationNorm, Transform, TransformedEnv

from tdppo import stats

__all__ = [
    "RunningObservationNorm", "RunningRewardNorm", "apply_plan", "obs_norm_step",
    "reward_norm_step",
]  # fmt: skip

_F64 = torch.float64

Moments = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
"""``(x, event_ndim, mask, finite) -> (mean, var, count, finite)``: batch moments of a batch."""


def _gated_update(
    state: TensorDict,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    finite: torch.Tensor,
    moments: Moments | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Merge the batch ``x`` (``[*B, *shape]``, rows selected by ``mask``) into the statistics
    unless ``frozen`` or a counted value is non-finite; count skipped batches. Branch-free.

    ``moments`` (see :func:`tdppo.distributed.shard_moments`) replaces the whole-batch moments
    for a sharded batch; it also makes ``finite`` global. Returns ``(new leaves, finite)``."""
    mean, var, count, nonfinite = state["mean"], state["var"], state["count"], state["nonfinite"]
    if moments is None:
        b_mean, b_var, b_count = stats._batch_moments(x, mean.ndim, mask)
    else:
        b_mean, b_var, b_count, finite = moments(x, mean.ndim, mask, finite)
    n_mean, n_var, n_count = stats._merge_moments(mean, var, count, b_mean, b_var, b_count)
    allowed = ~state["frozen"]
    do = allowed & finite & (b_count > 0)  # an empty mask leaves everything bit-exact
    return {
        "mean": torch.where(do, n_mean, mean),
        "var": torch.where(do, n_var, var),
        "count": torch.where(do, n_count, count),
        "nonfinite": nonfinite + (allowed & ~finite).to(nonfinite.dtype),
    }, finite


def _with(state: TensorDict, new: dict[str, torch.Tensor]) -> TensorDict:
    out = state.copy()
    out.update(new)
    return out


def obs_norm_step(
    state: TensorDict,
    obs: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    eps: float,
    clip: float | None,
    update: bool,
    moments: Moments | None = None,
) -> tuple[TensorDict, torch.Tensor]:
    """One observation-normalizer step: count the selected rows once, then normalize all rows.

    Args:
        state: the buffers of a :class:`RunningObservationNorm` (``from_module`` keys):
            ``mean``/``var`` float64 ``[*shape]``, ``count`` float64 ``[]``, ``frozen`` bool
            ``[]``, ``nonfinite`` int64 ``[]``, ``loc``/``scale`` ``[*shape]`` (obs dtype) and
            ``standard_normal`` (passed through).
        obs: ``[*B, *shape]`` raw observations.
        mask: optional bool ``[*B]``: the rows that count (e.g. envs being reset); ``None``:
            all rows.
        eps: under the square root. clip: clamp the output to ``[-clip, clip]`` if given.
        update: static flag (training mode); ``False`` never updates. ``state["frozen"]`` is
            honoured too, with ``torch.where``.
        moments: the batch moments of a sharded batch (:func:`tdppo.distributed.shard_moments`);
            ``None``: the whole batch's.

    Returns:
        ``(new_state, out)``: a new TensorDict (inputs untouched) and ``[*B, *shape]`` in
        ``obs.dtype``, normalized with the updated statistics. If a counted value is NaN/inf the
        statistics stay unchanged and ``nonfinite`` is incremented (when an update was due:
        ``update`` and not frozen); the output is computed anyway.
    """
    new: dict[str, torch.Tensor] = {}
    if update:
        counted = obs
        if mask is not None:
            counted = torch.where(mask.reshape(mask.shape + (1,) * state["mean"].ndim), obs, 0)
        new, _ = _gated_update(state, obs, mask, torch.isfinite(counted).all(), moments)
    mean = new.get("mean", state["mean"])
    std = torch.sqrt(new.get("var", state["var"]) + eps)
    out = (obs.to(_F64) - mean) / std
    if clip is not None:
        out = out.clamp(-clip, clip)
    new["loc"] = mean.to(state["loc"].dtype)
    new["scale"] = std.to(state["scale"].dtype)
    out_dtype = obs.dtype if obs.dtype.is_floating_point else torch.get_default_dtype()
    return _with(state, new), out.to(out_dtype)


def reward_norm_step(
    state: TensorDict,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    *,
    eps: float,
    clip: float | None,
    update: bool,
    moments: Moments | None = None,
) -> tuple[TensorDict, torch.Tensor]:
    """One reward-normalizer step with gymnasium's same-step-autoreset semantics.

    ``acc = acc * gamma * (1 - terminated) + reward``; the return statistics are updated once
    with every env's ``acc``; ``out = reward / sqrt(var + eps)`` (clamped if ``clip``); then
    ``acc`` is zeroed where ``done``.

    Args:
        state: the buffers of a :class:`RunningRewardNorm`: ``mean``/``var``/``count`` float64
            ``[]``, ``acc`` float64 ``[*B, 1]``, ``gamma`` float64 ``[]``, ``frozen`` bool
            ``[]``, ``nonfinite`` int64 ``[]``.
        reward: ``[*B, 1]`` (any shape with ``acc.numel()`` elements is reshaped to it).
        terminated, done: bool, as many elements as ``reward``.
        eps, clip, update, moments: as in :func:`obs_norm_step`.

    Returns:
        ``(new_state, out)``, ``out`` shaped and typed like ``reward``. A non-finite reward
        leaves the statistics and ``acc`` unchanged (``acc`` is still zeroed where done) and
        increments ``nonfinite`` (when an update was due); the output is computed anyway.
    """
    acc = state["acc"]
    r = reward.to(_F64).reshape(acc.shape)
    acc_new = acc * state["gamma"] * (~terminated.reshape(acc.shape)).to(_F64) + r
    finite = torch.isfinite(r).all()
    new = {}
    if update:
        new, finite = _gated_update(state, acc_new.reshape(-1), None, finite, moments)
    out = r / torch.sqrt(new.get("var", state["var"]) + eps)
    if clip is not None:
        out = out.clamp(-clip, clip)
    acc_next = torch.where(finite, acc_new, acc)
    new["acc"] = torch.where(done.reshape(acc.shape), torch.zeros_like(acc), acc_next)
    out_dtype = reward.dtype if reward.dtype.is_floating_point else torch.get_default_dtype()
    return _with(state, new), out.reshape(reward.shape).to(out_dtype)


def apply_plan(
    plan,
    tstate: dict,
    ep_ret: torch.Tensor | None,
    next_obs: torch.Tensor,
    reset_obs: torch.Tensor,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    moments: Moments | None = None,
):
    """One vector step through a fused transform stack, in pipeline order (pure).

    ``plan``: ``(index in Compose, kind, eps, clip)`` with kind ``"cast"`` (to float32),
    ``"sum"`` (RewardSum), ``"obs"`` or ``"reward"``; ``tstate``: ``from_module(stack)`` as
    dicts, the transforms' states by index under ``"transforms"`` (absent when no transform holds
    a buffer, i.e. no normalizer). ``reset_obs`` is the observation each env starts its next step
    from (the reset's where ``done``). Returns ``(tstate, ep_ret, next_obs, reset_obs, reward)``
    after the stack, ``tstate`` with the same keys.
    """
    stats, out_reward = dict(tstate.get("transforms", {})), reward
    for i, kind, eps, clip in plan:
        if kind == "cast":
            next_obs, reset_obs = next_obs.to(torch.float32), reset_obs.to(torch.float32)
        elif kind == "sum":
            ep_ret = ep_ret + reward
        elif kind == "obs":
            ts, next_obs = obs_norm_step(
                stats[i], next_obs, None, eps=eps, clip=clip, update=True, moments=moments
            )
            stats[i], reset_obs = obs_norm_step(
                ts, reset_obs, done.squeeze(-1), eps=eps, clip=clip, update=True, moments=moments
            )
        else:
            stats[i], out_reward = reward_norm_step(
                stats[i], out_reward, terminated, done, eps=eps, clip=clip, update=True,
                moments=moments,
            )  # fmt: skip
    new_tstate = {**tstate, "transforms": stats} if "transforms" in tstate else tstate
    return new_tstate, ep_ret, next_obs, reset_obs, out_reward


# ----------------------------------------------------------------------------- shared helpers


def _key_list(keys: NestedKey | Sequence[NestedKey], what: str) -> list[NestedKey]:
    keys = [keys] if isinstance(keys, str) else list(keys)
    if len(keys) != 1:
        raise ValueError(f"{what} takes exactly one key (one set of statistics), got {keys}")
    return keys


def _check_args(eps: float, clip: float | None, nan_policy: str) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    if nan_policy not in ("raise", "skip"):
        raise ValueError(f"nan_policy must be 'raise' or 'skip', got {nan_policy!r}")


# TorchRL calls ``eval()`` on every transform it attaches (TransformedEnv's ``transform`` setter,
# ``Compose.append``/``insert``): its transforms conventionally live in eval mode. Here eval mode
# means "stop updating", so those attach-time calls are recognised (by the calling code object)
# and ignored; ``env.eval()`` / ``transform.eval()`` called by the user still take effect.
_ATTACH_CODES = frozenset(
    inspect.unwrap(f).__code__
    for f in (TransformedEnv.transform.fset, Compose.append, Compose.insert)
)


def _called_from_torchrl_attach(max_depth: int = 12) -> bool:
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return False
        if frame.f_code in _ATTACH_CODES:
            return True
        frame = frame.f_back
    return False


class _StatefulNorm:
    """Mixin: freeze/unfreeze, finiteness policy, buffer state, strict state-dict loading."""

    nan_policy: str
    moments: Moments | None = None
    """Batch moments of a sharded, data-parallel batch (:func:`tdppo.distributed.shard_moments`);
    ``None``: the whole batch's. A plain attribute: it describes the run, not the statistics."""

    def _register_common(self, nan_policy: str) -> None:
        self.nan_policy = nan_policy
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("nonfinite", torch.zeros((), dtype=torch.int64))

    def train(self, mode: bool = True):
        """``train(False)``/``eval()`` stops updates, except TorchRL's attach-time ``eval()``."""
        if not mode and self.training and _called_from_torchrl_attach():
            return self
        return super().train(mode)

    def set_container(self, container) -> None:
        """Attach to a Compose/env; infers a missing shape from the parent's specs right away."""
        super().set_container(container)
        if self._uninitialized() and self.parent is not None:
            self._ensure_initialized()

    def _uninitialized(self) -> bool:
        return any(isinstance(b, nn.parameter.UninitializedBuffer) for b in self._buffers.values())

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if self._uninitialized():
            if self.parent is None:
                raise RuntimeError(
                    f"{type(self).__name__}: state is not materialized yet (shape unknown); pass "
                    "the shape, attach it to an env, or load a state dict first."
                )
            self._ensure_initialized()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def freeze(self):
        """Stop updating the statistics (outputs still use them). Returns ``self``."""
        self.frozen.fill_(True)
        return self

    def unfreeze(self):
        """Resume updating the statistics. Returns ``self``."""
        self.frozen.fill_(False)
        return self

    def _state(self) -> TensorDict:
        """The buffers as a TensorDict: the same keys as ``TensorDict.from_module(self)``."""
        return TensorDict(dict(self._buffers), batch_size=[])

    def _write_back(self, new_state: TensorDict) -> None:
        for name, buf in self._buffers.items():
            value = new_state[name]
            if value is not buf:
                buf.copy_(value)

    def _check_finite(self, key: NestedKey, x: torch.Tensor) -> None:
        """Eager-only guard (syncs): raise before any statistic is touched."""
        if self.nan_policy == "raise":
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                raise ValueError(
                    f"{type(self).__name__}: {int(bad.sum())} non-finite value(s) (NaN/inf) out "
                    f"of {x.numel()} in {key!r}; statistics left untouched. Pass "
                    f"nan_policy='skip' to skip and count such batches instead."
                )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs
    ):
        for name, buf in self._buffers.items():
            key = prefix + name
            if key not in state_dict:
                errs.append(
                    f"{type(self).__name__}: missing normalizer state {key!r} in the state "
                    f"dict; refusing to start from fresh statistics."
                )
            elif isinstance(buf, nn.parameter.UninitializedBuffer):
                src = state_dict[key]
                buf.materialize(src.shape, device=buf.device, dtype=src.dtype)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs
        )


class RunningObservationNorm(_StatefulNorm, ObservationNorm):
    """Observation normalizer with running float64 statistics (gymnasium ``NormalizeObservation``).

    ``out = (obs - mean) / sqrt(var + eps)`` (optionally clamped to ``[-clip, clip]``), in the
    observation dtype. ObservationNorm's ``loc``/``scale`` are kept equal to ``mean`` and
    ``sqrt(var + eps)`` (obs dtype) so ObservationNorm's machinery sees consistent values.

    Which observations are counted:

    - every ``env.step``: the whole batch ``[*B, *shape]`` of ``("next", key)`` once (terminal
      observations of finished episodes included), then normalized with the updated stats;
    - ``env.reset``: only the rows being reset (the ``"_reset"`` mask TorchRL passes for
      partial resets; no mask means all rows) are counted, once, then normalized with the
      updated stats; rows not being reset keep the normalized value they had in the input
      tensordict (if it is there; ``TransformedEnv`` restores them from the input as well);
    - ``transform(td)`` applied directly: the whole ``td[key]`` once, like a step.

    Updates stop while ``frozen`` is true (``freeze()``/``unfreeze()``) or in eval mode
    (``transform.eval()`` / ``env.eval()``). Buffers: ``mean``, ``var`` (float64 ``shape``),
    ``count`` (float64), ``frozen`` (bool), ``nonfinite`` (int64: batches skipped for NaN/inf),
    ``loc``, ``scale`` (obs dtype) and ObservationNorm's ``standard_normal``.

    Args:
        in_keys: the one observation key to normalize. out_keys: where to write (default
            in place).
        shape: event shape of one observation; ``None`` infers it (and the dtype) from the
            parent env's observation spec, or materializes it from ``load_state_dict``.
        eps: added to the variance under the square root. clip: optional clamp bound.
        nan_policy: ``"raise"`` (``ValueError`` naming the key and the count of bad values,
            statistics untouched) or ``"skip"`` (batch not counted, ``nonfinite += 1``).
    """

    def __init__(
        self,
        in_keys: Sequence[NestedKey] = ("observation",),
        out_keys: Sequence[NestedKey] | None = None,
        shape: Sequence[int] | torch.Size | None = None,
        eps: float = 1e-8,
        clip: float | None = None,
        nan_policy: str = "raise",
    ) -> None:
        _check_args(eps, clip, nan_policy)
        in_keys = _key_list(in_keys, "RunningObservationNorm")
        out_keys = in_keys if out_keys is None else _key_list(out_keys, "RunningObservationNorm")
        loc = scale = None
        if shape is not None:
            loc = torch.zeros(torch.Size(shape))
            scale = torch.full(torch.Size(shape), (1.0 + eps) ** 0.5)
        super().__init__(
            loc=loc, scale=scale, in_keys=in_keys, out_keys=out_keys, standard_normal=True, eps=eps
        )
        self.clip = clip
        for name in ("mean", "var"):
            self.register_buffer(name, nn.parameter.UninitializedBuffer(dtype=_F64))
        self.register_buffer("count", torch.full((), stats.INITIAL_COUNT, dtype=_F64))
        self._register_common(nan_policy)
        if shape is not None:
            self._materialize(torch.Size(shape), self.loc.dtype, self.loc.device)

    def init_stats(self, *args, **kwargs) -> None:
        """Not supported: the statistics are running ones, updated as data flows through."""
        raise NotImplementedError(
            "RunningObservationNorm keeps running statistics; there is nothing to initialize."
        )

    def _materialize(self, shape: torch.Size, dtype: torch.dtype, device) -> None:
        dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
        init = stats.init(shape, device=device)
        for name, value in (("mean", init["mean"]), ("var", init["var"])):
            buf = getattr(self, name)
            if isinstance(buf, nn.parameter.UninitializedBuffer):
                buf.materialize(shape, device=device, dtype=_F64)
                buf.copy_(value)
        for name, value in (("loc", init["mean"]), ("scale", (init["var"] + self.eps).sqrt())):
            buf = getattr(self, name)
            if isinstance(buf, nn.parameter.UninitializedBuffer):
                buf.materialize(shape, device=device, dtype=dtype)
                buf.copy_(value)

    def _ensure_initialized(self) -> None:
        if not isinstance(self.mean, nn.parameter.UninitializedBuffer):
            return
        parent = self.parent
        if parent is None:
            raise RuntimeError(
                "RunningObservationNorm(shape=None) needs a parent env to infer the shape: pass "
                "shape=... or attach it to an env first."
            )
        spec = parent.full_observation_spec
        leaf = spec[self.in_keys[0]]
        self._materialize(leaf.shape[spec.ndim :], leaf.dtype, leaf.device)

    def _normalize(
        self, key: NestedKey, obs: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        self._ensure_initialized()
        shape = tuple(self.mean.shape)
        if obs.ndim < len(shape) or tuple(obs.shape[obs.ndim - len(shape) :]) != shape:
            raise ValueError(
                f"RunningObservationNorm: {key!r} expected shape [*batch, "
                f"{', '.join(map(str, shape))}], received {tuple(obs.shape)}"
            )
        if mask is not None:
            batch = obs.shape[: obs.ndim - len(shape)]
            if mask.ndim > len(batch):
                mask = mask.flatten(len(batch)).any(-1)
            mask = mask.reshape(batch)
            self._check_finite(key, torch.where(mask.reshape(batch + (1,) * len(shape)), obs, 0))
        else:
            self._check_finite(key, obs)
        new_state, out = obs_norm_step(
            self._state(), obs, mask, eps=self.eps, clip=self.clip, update=self.training,
            moments=self.moments,
        )  # fmt: skip
        self._write_back(new_state)
        return out

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        """Step path: count the whole batch once, then normalize it."""
        (in_key,), (out_key,) = self.in_keys, self.out_keys
        value = next_tensordict.get(in_key, None)
        if value is None:
            if not self.missing_tolerance:
                raise KeyError(f"{type(self).__name__}: {in_key!r} not found in {next_tensordict}")
            return next_tensordict
        next_tensordict.set(out_key, self._normalize(in_key, value, None))
        return next_tensordict

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Applied directly to a TensorDict: like a step (counts ``td[key]`` once)."""
        return self._call(tensordict)

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        """Reset path: count only the rows being reset (``"_reset"`` mask), see class doc."""
        (in_key,), (out_key,) = self.in_keys, self.out_keys
        value = tensordict_reset.get(in_key, None)
        if value is None:
            return tensordict_reset
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            tensordict_reset.set(out_key, self._normalize(in_key, value, None))
            return tensordict_reset
        out = self._normalize(in_key, value, reset)
        batch = out.shape[: out.ndim - self.mean.ndim]
        mask = reset.flatten(len(batch)).any(-1) if reset.ndim > len(batch) else reset
        prev = tensordict.get(out_key, None)
        if prev is not None and prev.shape == out.shape:
            out = torch.where(mask.reshape(batch + (1,) * self.mean.ndim), out, prev)
        tensordict_reset.set(out_key, out)
        return tensordict_reset

    def transform_observation_spec(self, observation_spec: TensorSpec) -> TensorSpec:
        """Unbounded float of the same shape, or ``Bounded(-clip, clip)`` when clipping."""
        (in_key,), (out_key,) = self.in_keys, self.out_keys
        leaf = observation_spec[in_key]
        if isinstance(self.mean, nn.parameter.UninitializedBuffer):
            self._materialize(leaf.shape[observation_spec.ndim :], leaf.dtype, leaf.device)
        observation_spec[out_key] = _out_spec(leaf, self.clip)
        return observation_spec


def _out_spec(leaf: TensorSpec, clip: float | None) -> TensorSpec:
    dtype = leaf.dtype if leaf.dtype.is_floating_point else torch.get_default_dtype()
    if clip is None:
        return Unbounded(shape=leaf.shape, dtype=dtype, device=leaf.device)
    return Bounded(low=-clip, high=clip, shape=leaf.shape, dtype=dtype, device=leaf.device)


class RunningRewardNorm(_StatefulNorm, Transform):
    """Reward scaled by the running std of the discounted return (gymnasium ``NormalizeReward``).

    Per vector step (same-step autoreset semantics): ``acc = acc * gamma * (1 - terminated) +
    reward``; the return statistics are updated once with every env's ``acc``; the output
    is ``reward / sqrt(var + eps)`` (clamped if ``clip``); ``acc`` is then zeroed where
    ``done`` (terminated or truncated). Reads ``reward``, ``terminated`` and ``done`` from the
    step's next tensordict (or from the tensordict itself when applied directly). On
    ``reset``, ``acc`` is zeroed for the envs being reset (all of them without a ``"_reset"``
    mask), as gymnasium's ``reset`` does; no statistic is touched there.

    TorchRL's ``VecNorm`` on the reward normalizes each reward by the reward's own statistics,
    not by those of the discounted return, hence this transform.

    Buffers: ``mean``, ``var``, ``count`` (float64 ``[]``), ``acc`` (float64, the reward's
    shape ``[*B, 1]``), ``gamma`` (float64 ``[]``), ``frozen`` (bool), ``nonfinite`` (int64).
    Updates of the statistics stop while frozen or in eval mode (``acc`` keeps accumulating,
    as in gymnasium).

    Args:
        batch_shape: the env batch size ``B``; ``None`` infers ``acc``'s shape from the parent
            env's reward spec (``[*batch_size, 1]``), or from ``load_state_dict``.
        gamma: discount of the return accumulator, in ``[0, 1]``.
        eps, clip, nan_policy: as in :class:`RunningObservationNorm`.
        in_keys: the one reward key.
    """

    def __init__(
        self,
        batch_shape: Sequence[int] | torch.Size | None = None,
        gamma: float = 0.99,
        eps: float = 1e-8,
        clip: float | None = None,
        in_keys: Sequence[NestedKey] = ("reward",),
        nan_policy: str = "raise",
    ) -> None:
        _check_args(eps, clip, nan_policy)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        in_keys = _key_list(in_keys, "RunningRewardNorm")
        super().__init__(in_keys=in_keys, out_keys=list(in_keys))
        self.eps = eps
        self.clip = clip
        for name, value in stats.init(()).items():
            self.register_buffer(name, value.clone())
        if batch_shape is None:
            acc = nn.parameter.UninitializedBuffer(dtype=_F64)
        else:
            acc = torch.zeros(torch.Size(batch_shape) + (1,), dtype=_F64)
        self.register_buffer("acc", acc)
        self.register_buffer("gamma", torch.tensor(gamma, dtype=_F64))
        self._register_common(nan_policy)

    def _ensure_initialized(self, shape: torch.Size | None = None, device=None) -> None:
        if not isinstance(self.acc, nn.parameter.UninitializedBuffer):
            return
        if shape is None:
            parent = self.parent
            if parent is None:
                raise RuntimeError(
                    "RunningRewardNorm(batch_shape=None) needs a parent env to infer the batch "
                    "shape: pass batch_shape=... or attach it to an env first."
                )
            leaf = parent.full_reward_spec[self.in_keys[0]]
            shape, device = leaf.shape, leaf.device
        self.acc.materialize(shape, device=device, dtype=_F64)
        self.acc.zero_()

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        """Step path: see class doc."""
        (key,) = self.in_keys
        reward = next_tensordict.get(key, None)
        if reward is None:
            if not self.missing_tolerance:
                raise KeyError(f"{type(self).__name__}: {key!r} not found in {next_tensordict}")
            return next_tensordict
        flags = [next_tensordict.get(k, None) for k in ("terminated", "done")]
        for k, v in zip(("terminated", "done"), flags):
            if v is None:
                raise KeyError(f"{type(self).__name__}: {k!r} not found in {next_tensordict}")
        self._ensure_initialized()
        if reward.shape != self.acc.shape:
            raise ValueError(
                f"RunningRewardNorm: {key!r} expected shape {tuple(self.acc.shape)}, "
                f"received {tuple(reward.shape)}"
            )
        self._check_finite(key, reward)
        new_state, out = reward_norm_step(
            self._state(), reward, *flags, eps=self.eps, clip=self.clip, update=self.training,
            moments=self.moments,
        )  # fmt: skip
        self._write_back(new_state)
        next_tensordict.set(key, out)
        return next_tensordict

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Applied directly to a TensorDict holding reward, terminated and done: like a step."""
        return self._call(tensordict)

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        self._ensure_initialized()
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            self.acc.zero_()
        else:
            mask = reset.reshape(self.acc.shape)
            self.acc.copy_(torch.where(mask, torch.zeros_like(self.acc), self.acc))
        return tensordict_reset

    def transform_reward_spec(self, reward_spec: TensorSpec) -> TensorSpec:
        """Unchanged, or ``Bounded(-clip, clip)`` of the same shape when clipping."""
        (key,) = self.in_keys
        leaf = reward_spec[key] if isinstance(reward_spec, Composite) else reward_spec
        if isinstance(self.acc, nn.parameter.UninitializedBuffer):
            self._ensure_initialized(leaf.shape, leaf.device)
        if self.clip is None:
            return reward_spec
        if not isinstance(reward_spec, Composite):
            return _out_spec(leaf, self.clip)
        reward_spec[key] = _out_spec(leaf, self.clip)
        return reward_spec
