"""Capture and restore the full state of gymnasium's ``SyncVectorEnv`` as fixed-shape tensors.

What a sub-env carries from one step to the next, and where it goes (``B`` sub-envs):

- ``sim`` float64 ``[B, S]``: the simulator. Classic control: ``unwrapped.state`` (its
  float32/float64 dtype is kept in ``ints``: MountainCarContinuous switches to float32 after
  its first step, and numpy's promotion makes the dtype part of the dynamics). MuJoCo: the
  full integration state (``mj_getState`` with ``mjSTATE_INTEGRATION``: time, qpos, qvel, act,
  ctrl, applied forces, warm start, ...) followed by every model-sized derived array the envs
  read *before* ``mj_step`` recomputes it (e.g. Ant's and Humanoid's ``xpos``/``xipos`` for the
  position before the step; they are one sub-step stale after ``mj_step``, so they cannot be
  recomputed from ``qpos`` with ``mj_forward``).
- ``ints`` int64 ``[B, len(INT_COLUMNS)]``: the ``np_random`` PCG64 bit generator (128-bit
  ``state`` and ``inc`` as two int64 words each, ``has_uint32``, ``uinteger``), ``TimeLimit``'s
  elapsed steps, ``OrderEnforcing``'s and ``PassiveEnvChecker``'s flags, CartPole's
  ``steps_beyond_terminated``, and the vector env's autoreset flag of that sub-env.

:func:`unsupported_reason` says why a vector env cannot be captured (``None`` when it can):
anything but the classic-control and MuJoCo envs below, another wrapper than ``TimeLimit``,
``OrderEnforcing`` and ``PassiveEnvChecker``, or a bit generator other than PCG64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["INT_COLUMNS", "GymStateLayout", "capture", "restore", "unsupported_reason"]

INT_COLUMNS = (
    "rng_state_lo",
    "rng_state_hi",
    "rng_inc_lo",
    "rng_inc_hi",
    "rng_has_uint32",
    "rng_uinteger",
    "elapsed_steps",  # TimeLimit; -1: None (never reset)
    "has_reset",  # OrderEnforcing
    "checked_reset",  # PassiveEnvChecker (0 if absent)
    "checked_step",
    "state_float32",  # classic control: unwrapped.state is float32 (else float64)
    "steps_beyond_terminated",  # CartPole; -1: None
    "autoreset",  # SyncVectorEnv._autoreset_envs[i]
)
_COL = {name: i for i, name in enumerate(INT_COLUMNS)}

# classic-control envs whose whole dynamic state is ``unwrapped.state`` (+ the listed extras),
# with the length of that state
_CLASSIC = {
    "CartPoleEnv": 4,
    "PendulumEnv": 2,
    "AcrobotEnv": 4,
    "MountainCarEnv": 2,
    "Continuous_MountainCarEnv": 2,
}
_WRAPPERS = ("TimeLimit", "OrderEnforcing", "PassiveEnvChecker")
# MjData arrays (model-sized, float64) that an env may read before mj_step recomputes them
_MJ_DERIVED = (
    "xpos", "xquat", "xmat", "xipos", "ximat", "xanchor", "xaxis", "geom_xpos", "geom_xmat",
    "site_xpos", "site_xmat", "cam_xpos", "cam_xmat", "subtree_com", "subtree_linvel",
    "subtree_angmom", "cinert", "crb", "cdof", "cdof_dot", "cvel", "cacc", "cfrc_int",
    "cfrc_ext", "qfrc_bias", "qfrc_passive", "qfrc_actuator", "qfrc_smooth", "qfrc_constraint",
    "qacc", "qacc_smooth", "actuator_length", "actuator_velocity", "actuator_force",
    "ten_length", "ten_velocity", "sensordata", "energy",
)  # fmt: skip
_MASK64 = (1 << 64) - 1


def _layers(env) -> tuple[list, object]:
    """The wrappers of one sub-env (outermost first) and the unwrapped env."""
    wrappers = []
    while hasattr(env, "env") and env is not getattr(env, "unwrapped", env):
        wrappers.append(env)
        env = env.env
    return wrappers, env


def _is_mujoco(env) -> bool:
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except Exception:  # mujoco not installed
        return False
    return isinstance(env, MujocoEnv)


def unsupported_reason(vec) -> str | None:
    """Why the state of the vector env ``vec`` cannot be captured; ``None`` if it can."""
    import gymnasium

    if not isinstance(vec, gymnasium.vector.SyncVectorEnv):
        return f"{type(vec).__name__} is not gymnasium's SyncVectorEnv"
    for sub in vec.envs:
        wrappers, base = _layers(sub)
        for w in wrappers:
            if type(w).__name__ not in _WRAPPERS:
                return f"wrapper {type(w).__name__} keeps state tdppo does not capture"
        name = type(base).__name__
        if name not in _CLASSIC and not _is_mujoco(base):
            return f"{name} is neither a classic-control nor a MuJoCo env"
        if not isinstance(base.np_random.bit_generator, np.random.PCG64):
            return f"{name}'s np_random is not a PCG64 generator"
    return None


class GymStateLayout:
    """Sizes of the state of one vector env: ``sim`` width ``S`` and, for MuJoCo, its parts."""

    def __init__(self, vec):
        _, base = _layers(vec.envs[0])
        self.mujoco = _is_mujoco(base)
        if self.mujoco:
            import mujoco

            self.spec = mujoco.mjtState.mjSTATE_INTEGRATION
            self.n_integration = int(mujoco.mj_stateSize(base.model, self.spec))
            self.derived = []  # (name, size)
            for name in _MJ_DERIVED:
                arr = getattr(base.data, name, None)
                if isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.size:
                    self.derived.append((name, arr.size))
            self.width = self.n_integration + sum(n for _, n in self.derived)
        else:
            self.width = _CLASSIC[type(base).__name__]
        self.num_envs = vec.num_envs

    def buffers(self) -> dict[str, torch.Tensor]:
        """Zeroed buffers of this layout: ``sim`` float64 ``[B, S]``, ``ints`` int64 ``[B, K]``."""
        return {
            "sim": torch.zeros(self.num_envs, self.width, dtype=torch.float64),
            "ints": torch.zeros(self.num_envs, len(INT_COLUMNS), dtype=torch.int64),
        }


def _split128(v: int) -> tuple[int, int]:
    """A 128-bit unsigned int as two int64 words (lo, hi), two's complement."""
    s = lambda w: w - (1 << 64) if w >= (1 << 63) else w
    return s(v & _MASK64), s((v >> 64) & _MASK64)


def _join128(lo: int, hi: int) -> int:
    return (lo & _MASK64) | ((hi & _MASK64) << 64)


def capture(vec, layout: GymStateLayout, sim: torch.Tensor, ints: torch.Tensor) -> None:
    """Fill ``sim`` and ``ints`` (CPU tensors of ``layout``'s shapes) from the live ``vec``."""
    sim_np = np.zeros((layout.num_envs, layout.width), dtype=np.float64)
    ints_np = np.zeros((layout.num_envs, len(INT_COLUMNS)), dtype=np.int64)
    for i, sub in enumerate(vec.envs):
        wrappers, base = _layers(sub)
        row = ints_np[i]
        for w in wrappers:
            kind = type(w).__name__
            if kind == "TimeLimit":
                row[_COL["elapsed_steps"]] = -1 if w._elapsed_steps is None else w._elapsed_steps
            elif kind == "OrderEnforcing":
                row[_COL["has_reset"]] = int(w._has_reset)
            elif kind == "PassiveEnvChecker":
                row[_COL["checked_reset"]] = int(w.checked_reset)
                row[_COL["checked_step"]] = int(w.checked_step)
        bg = base.np_random.bit_generator.state
        row[_COL["rng_state_lo"]], row[_COL["rng_state_hi"]] = _split128(bg["state"]["state"])
        row[_COL["rng_inc_lo"]], row[_COL["rng_inc_hi"]] = _split128(bg["state"]["inc"])
        row[_COL["rng_has_uint32"]] = int(bg["has_uint32"])
        row[_COL["rng_uinteger"]] = int(bg["uinteger"])
        row[_COL["autoreset"]] = int(vec._autoreset_envs[i])
        if layout.mujoco:
            import mujoco

            mujoco.mj_getState(
                base.model, base.data, sim_np[i, : layout.n_integration], layout.spec
            )
            at = layout.n_integration
            for name, n in layout.derived:
                sim_np[i, at : at + n] = getattr(base.data, name).reshape(-1)
                at += n
        else:
            if base.state is None:
                raise RuntimeError("capture_state: the gym env has not been reset yet")
            state = np.asarray(base.state)
            sim_np[i] = state.reshape(-1)
            row[_COL["state_float32"]] = int(state.dtype == np.float32)
            sbt = getattr(base, "steps_beyond_terminated", None)
            row[_COL["steps_beyond_terminated"]] = -1 if sbt is None else int(sbt)
    sim.copy_(torch.from_numpy(sim_np))
    ints.copy_(torch.from_numpy(ints_np))


def restore(vec, layout: GymStateLayout, sim: torch.Tensor, ints: torch.Tensor) -> None:
    """Push ``sim`` and ``ints`` (as :func:`capture` wrote them) into the live ``vec``."""
    sim_np = sim.detach().cpu().numpy()
    ints_np = ints.detach().cpu().numpy()
    if not ints_np[:, [_COL["rng_inc_lo"], _COL["rng_inc_hi"]]].any(axis=1).all():
        # a PCG64 increment is odd, never 0: these buffers were never filled by capture()
        raise RuntimeError("restore_state: the gym state buffers hold no captured state")
    autoreset = np.zeros(layout.num_envs, dtype=np.bool_)
    for i, sub in enumerate(vec.envs):
        wrappers, base = _layers(sub)
        row = [int(x) for x in ints_np[i]]
        for w in wrappers:
            kind = type(w).__name__
            if kind == "TimeLimit":
                e = row[_COL["elapsed_steps"]]
                w._elapsed_steps = None if e < 0 else e
            elif kind == "OrderEnforcing":
                w._has_reset = bool(row[_COL["has_reset"]])
            elif kind == "PassiveEnvChecker":
                w.checked_reset = bool(row[_COL["checked_reset"]])
                w.checked_step = bool(row[_COL["checked_step"]])
        base.np_random.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {
                "state": _join128(row[_COL["rng_state_lo"]], row[_COL["rng_state_hi"]]),
                "inc": _join128(row[_COL["rng_inc_lo"]], row[_COL["rng_inc_hi"]]),
            },
            "has_uint32": row[_COL["rng_has_uint32"]],
            "uinteger": row[_COL["rng_uinteger"]],
        }
        autoreset[i] = bool(row[_COL["autoreset"]])
        if layout.mujoco:
            import mujoco

            mujoco.mj_setState(
                base.model, base.data, np.ascontiguousarray(sim_np[i, : layout.n_integration]),
                layout.spec,
            )  # fmt: skip
            at = layout.n_integration
            for name, n in layout.derived:
                arr = getattr(base.data, name)
                arr[...] = sim_np[i, at : at + n].reshape(arr.shape)
                at += n
        else:
            dtype = np.float32 if row[_COL["state_float32"]] else np.float64
            base.state = np.array(sim_np[i], dtype=dtype)
            if hasattr(base, "steps_beyond_terminated"):
                s = row[_COL["steps_beyond_terminated"]]
                base.steps_beyond_terminated = None if s < 0 else s
    vec._autoreset_envs = autoreset
