"""Exact resume through the gym backend (TorchRL ``GymEnv`` over gymnasium's SyncVectorEnv).

References, never the code's own output:
- the capture/restore round trip against ``copy.deepcopy`` of gymnasium's vector env taken at
  the capture, stepped with the same actions by plain gymnasium calls;
- end to end, the uninterrupted run: N frames, then resume to 2N (also after a SIGKILL inside
  a checkpoint write) equals 2N straight, every leaf of ``EXACT_KEYS`` bit for bit.

The end-to-end tests hold the driver to its contract with the env: ``base_env.capture_state()``
just before every checkpoint save, ``base_env.restore_state()`` right after loading one.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tdppo import Config, train
from tdppo.checkpoint import load_checkpoint
from tdppo.envs import make_env
from tdppo.state import EXACT_KEYS

pytest.importorskip("mujoco", reason="needs the mujoco extra: pip install 'tdppo[mujoco]'")

HERE = Path(__file__).parent
SUBPROC_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo 4 writes MUJOCO_LOG.TXT into the working directory (a deprecation warning on
    gymnasium's half_cheetah.xml): keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


def _actions(spec, n: int, steps: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if spec.dtype == torch.int64:
        return [torch.randint(0, spec.space.n, (n,), generator=gen) for _ in range(steps)]
    low, high = spec.space.low, spec.space.high
    return [low + (high - low) * torch.rand(low.shape, generator=gen) for _ in range(steps)]


def _torchrl_steps(env, td, actions):
    """Step TorchRL's base env as the collector does; (obs, reward, done, obs after reset)."""
    out = []
    for a in actions:
        td["action"] = a
        tr, td = env.step_and_maybe_reset(td)
        nxt = tr["next"]
        out.append(
            (
                nxt["observation"].clone(),
                nxt["reward"].reshape(-1).clone(),
                nxt["done"].reshape(-1).clone(),
                td["observation"].clone(),
            )
        )
    return td, out


def _gymnasium_steps(vec, actions):
    """The same steps by plain gymnasium calls: step, then reset exactly the done envs."""
    out = []
    for a in actions:
        obs, rew, term, trunc, _ = vec.step(a.numpy())
        done = term | trunc
        nxt = torch.from_numpy(np.array(obs))
        if done.any():
            obs, _ = vec.reset(options={"reset_mask": done})
        out.append(
            (
                nxt,
                torch.from_numpy(np.asarray(rew, dtype=np.float64)),
                torch.from_numpy(done),
                torch.from_numpy(np.array(obs)),
            )
        )
    return out


def _independent_copy(vec):
    """``copy.deepcopy`` of gymnasium's vector env. gymnasium's MuJoCo envs deep-copy through
    ``EzPickle`` (a fresh env from the constructor's arguments: zeroed ``MjData``, new
    ``np_random``), so for them MuJoCo's own whole-struct copy ``mj_copyData`` and a deep copy
    of the generator complete it."""
    ref = copy.deepcopy(vec)
    for src, dst in zip(vec.envs, ref.envs):
        u, v = src.unwrapped, dst.unwrapped
        if hasattr(u, "data") and hasattr(u, "model"):
            import mujoco

            mujoco.mj_copyData(v.data, v.model, u.data)
            v._np_random = copy.deepcopy(u.np_random)
    return ref


def _assert_same(a, b, what):
    assert len(a) == len(b)
    for t, (x, y) in enumerate(zip(a, b)):
        for name, u, v in zip(("obs", "reward", "done", "reset obs"), x, y):
            assert u.dtype == v.dtype or name == "reward", (what, name)
            assert torch.equal(u, v.to(u.dtype)), f"{what}: {name} differs at step {t}"


# (id, steps before the capture, steps after): the "before" steps leave episodes mid-way and
# the "after" steps cross episode ends (terminations, or Pendulum's 200-step time limit), so
# both the simulators and the reset draws (np_random) and TimeLimit's counts are exercised.
ROUND_TRIP = [
    ("CartPole-v1", 30, 60),
    ("Pendulum-v1", 185, 30),
    ("Acrobot-v1", 490, 20),
    ("MountainCarContinuous-v0", 990, 20),  # its state turns float32 after a step
    ("HalfCheetah-v5", 990, 20),
    ("Hopper-v5", 20, 60),  # terminates under random actions: MuJoCo reset draws
    ("Ant-v5", 10, 20),  # reads xpos before mj_step: derived arrays must be restored too
    # (Ant alone ends no episode here: it is there for the derived arrays)
]


@pytest.mark.parametrize("env_id,before,after", ROUND_TRIP, ids=[r[0] for r in ROUND_TRIP])
def test_capture_restore_matches_a_deep_copy(env_id, before, after):
    """capture -> step k -> restore (into the same env, and into a fresh env built with
    another seed: the buffers alone carry the state) -> step k, against a deep copy of
    gymnasium's vector env taken at the capture."""
    kw = dict(backend="gym", normalize_obs=False, normalize_reward=False)
    env = make_env(env_id, 3, seed=0, **kw).base_env
    fresh = make_env(env_id, 3, seed=123, **kw).base_env
    try:
        assert hasattr(env, "capture_state") and hasattr(env, "restore_state")
        td = env.reset()
        td, _ = _torchrl_steps(env, td, _actions(env.action_spec, 3, before, seed=1))
        reference = _independent_copy(env._env)
        env.capture_state()
        saved = {k: v.clone() for k, v in env.state_dict().items()}
        acts = _actions(env.action_spec, 3, after, seed=2)
        ref = _gymnasium_steps(reference, acts)
        assert any(bool(d.any()) for _, _, d, _ in ref) or env_id == "Ant-v5"

        _, first = _torchrl_steps(env, td.clone(), acts)
        _assert_same(first, ref, "live run vs deep copy")
        env.restore_state()
        _, again = _torchrl_steps(env, td.clone(), acts)
        _assert_same(again, ref, "restored in place")

        fresh.reset()
        fresh.load_state_dict(saved)
        fresh.restore_state()
        _, other = _torchrl_steps(fresh, td.clone(), acts)
        _assert_same(other, ref, "restored into a fresh env")
    finally:
        env.close()
        fresh.close()


def test_buffers_are_the_env_module_state():
    """The state lives in fixed-shape buffers that ``TensorDict.from_module`` gathers (so
    every checkpoint holds it); the PCG64 words round-trip 128-bit integers."""
    from tensordict import TensorDict

    from tdppo.envs import gym_state

    env = make_env("Pendulum-v1", 2, backend="gym", seed=5).base_env
    try:
        leaves = TensorDict.from_module(env)
        assert set(leaves.keys()) == {"sim", "ints"}
        assert leaves["sim"].dtype == torch.float64 and leaves["sim"].shape == (2, 2)
        assert leaves["ints"].shape == (2, len(gym_state.INT_COLUMNS))
        env.reset()
        env.capture_state()
        bg = env._env.envs[1].unwrapped.np_random.bit_generator.state["state"]
        row = leaves["ints"][1].tolist()
        col = {n: i for i, n in enumerate(gym_state.INT_COLUMNS)}
        lo, hi = row[col["rng_state_lo"]], row[col["rng_state_hi"]]
        assert (lo % 2**64) + ((hi % 2**64) << 64) == bg["state"]
        assert (row[col["rng_inc_lo"]] % 2**64) + ((row[col["rng_inc_hi"]] % 2**64) << 64) == (
            bg["inc"]
        )
        assert torch.equal(
            leaves["sim"][1], torch.from_numpy(np.asarray(env._env.envs[1].unwrapped.state))
        )
    finally:
        env.close()


def test_uncapturable_env_has_no_capture_methods():
    """An env whose state tdppo cannot capture keeps today's behaviour: no buffers, no
    methods (the driver restarts its episodes with a warning), and the reason is given."""
    from tensordict import TensorDict

    env = make_env("CliffWalking-v1", 2, backend="gym", seed=0, normalize_obs=False).base_env
    try:
        assert not hasattr(env, "capture_state") and not hasattr(env, "restore_state")
        assert TensorDict.from_module(env).is_empty()
        assert "CliffWalkingEnv" in env.state_unsupported
    finally:
        env.close()


def test_restore_without_a_capture_is_an_error():
    env = make_env("CartPole-v1", 2, backend="gym", seed=0).base_env
    try:
        with pytest.raises(RuntimeError, match="no captured state"):
            env.restore_state()
    finally:
        env.close()


# -- end to end: N, then resume to 2N, equals 2N -------------------------------------------------

E2E = {  # id: (num_envs, num_steps, updates in N)
    "CartPole-v1": (4, 16, 3),
    "Pendulum-v1": (2, 32, 7),  # resumes at step 224 of each env: past one time limit
    "HalfCheetah-v5": (2, 16, 2),
}


def _cfg(env_id, run_dir, frames, **kw):
    n_envs, n_steps, _ = E2E[env_id]
    return Config.for_env(
        env_id, frames=frames, run_dir=str(run_dir), backend="gym", num_envs=n_envs,
        num_steps=n_steps, epochs=1, minibatches=2, compile=False, quiet=True, eval_episodes=0,
        threads=1, **kw,
    )  # fmt: skip


def assert_same_state(a, b):
    for top in EXACT_KEYS:
        la, lb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        assert set(la.keys()) == set(lb.keys()), top
        for k in la.keys():
            assert la[k].dtype == lb[k].dtype and la[k].shape == lb[k].shape, f"{top}/{k}"
            assert torch.equal(la[k], lb[k]), f"{top}/{k} differs"


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(E2E))
def test_resume_bit_exact_through_gym_backend(env_id, tmp_path, capsys):
    n_envs, n_steps, updates = E2E[env_id]
    n = n_envs * n_steps * updates
    train(_cfg(env_id, tmp_path / "a", 2 * n, checkpoint_every=0))
    train(_cfg(env_id, tmp_path / "b", n, checkpoint_every=0))
    capsys.readouterr()
    train(_cfg(env_id, tmp_path / "b", 2 * n, checkpoint_every=0, resume=True))
    assert "starts new episodes" not in capsys.readouterr().err
    straight, resumed = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert "resume_reset_episodes" not in resumed["meta"].keys()
    assert set(resumed["env", "module"].keys()) == {"sim", "ints"}
    assert_same_state(straight, resumed)


def _cli_args(env_id, run_dir, frames, every, resume=False):
    n_envs, n_steps, _ = E2E[env_id]
    args = [
        "train", "--env", env_id, "--backend", "gym", "--num-envs", n_envs,
        "--num-steps", n_steps, "--epochs", 1, "--minibatches", 2, "--no-compile", "--quiet",
        "--eval-episodes", 0, "--threads", 1, "--frames", frames, "--run-dir", run_dir,
        "--checkpoint-every", every,
    ]  # fmt: skip
    return args + (["--resume"] if resume else [])


def _crash_run(mode, n, args):
    return subprocess.run(
        [sys.executable, str(HERE / "_crash_runner.py"), mode, str(n), "--", *map(str, args)],
        capture_output=True,
        text=True,
        env=SUBPROC_ENV,
    )


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(E2E))
def test_sigkill_mid_checkpoint_then_resume_is_bit_exact(env_id, tmp_path, monkeypatch):
    """SIGKILL inside the second checkpoint's write (at its middle fsync), then resume from
    the first: the end state equals the uninterrupted run's. The uninterrupted run (in
    process, the CLI's code path) also tells which fsync calls each checkpoint write makes."""
    n_envs, n_steps, _ = E2E[env_id]
    every, total = n_envs * n_steps * 2, n_envs * n_steps * 8
    calls: list = []  # per fsync: which checkpoint write made it (None: none)
    real_fsync = os.fsync

    def fsync(fd):
        f, write = sys._getframe(1), None
        while f is not None:  # the outermost frame in tdppo/checkpoint.py names the write
            if f.f_code.co_filename.endswith(os.path.join("tdppo", "checkpoint.py")):
                write = (id(f), repr(f.f_locals.get("frames")))
            f = f.f_back
        calls.append(write)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    train(_cfg(env_id, tmp_path / "ref", total, checkpoint_every=every))
    monkeypatch.setattr(os, "fsync", real_fsync)
    groups: dict = {}  # write -> [first, last] fsync number (1-based)
    for i, write in enumerate(calls, start=1):
        if write is not None:
            groups.setdefault(write, [i, i])[1] = i
    groups = sorted(groups.values())
    assert len(groups) >= 3, f"expected one group of fsync calls per checkpoint, got {groups}"
    kill_at = (groups[1][0] + groups[1][1] + 1) // 2

    run = tmp_path / "run"
    p = _crash_run("fsync", kill_at, _cli_args(env_id, run, total, every))
    assert p.returncode == -9, p.stderr[-2000:]
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    assert int(latest) == every, "the kill must land inside the second checkpoint's write"
    p = _crash_run("none", 0, _cli_args(env_id, run, total, every, resume=True))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "starts new episodes" not in p.stderr
    assert_same_state(load_checkpoint(tmp_path / "ref"), load_checkpoint(run))


def test_uncapturable_env_resume_restarts_episodes_with_the_warning(tmp_path, capsys):
    """An env whose state is not captured (here a CartPole subclass tdppo does not know)
    resumes as before: new episodes, a warning, ``meta/resume_reset_episodes``."""
    import gymnasium
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    class OpaqueCartPole(CartPoleEnv):
        pass

    env_id = "tdppo-test/OpaqueCartPole-v0"
    if env_id not in gymnasium.registry:
        gymnasium.register(env_id, entry_point=OpaqueCartPole, max_episode_steps=500)
    kw = dict(
        backend="gym", num_envs=2, num_steps=16, epochs=1, minibatches=2, compile=False,
        quiet=True, eval_episodes=0, threads=1, run_dir=str(tmp_path),
    )  # fmt: skip
    assert not hasattr(make_env(env_id, 2, seed=0).base_env, "capture_state")
    train(Config.for_env(env_id, frames=64, **kw))
    capsys.readouterr()
    state = train(Config.for_env(env_id, frames=128, resume=True, **kw))
    assert "starts new episodes" in capsys.readouterr().err
    assert int(state["meta", "resume_reset_episodes"]) == 1
    assert int(state["counters", "frames"]) == 128
