"""RunningObservationNorm / RunningRewardNorm against gymnasium's vector wrappers and numpy float64.

The environments are defined here: ``TableEnv`` (TorchRL, stateless: the step index ``t`` travels
in the tensordict) and ``ArrayVectorEnv`` (gymnasium) emit the same pre-drawn arrays, so the
normalizers can be compared value for value with an independent implementation.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers.vector import NormalizeObservation, NormalizeReward
from tensordict import TensorDict
from torchrl.data import Composite, Unbounded
from torchrl.data.tensor_specs import Bounded
from torchrl.envs import Compose, EnvBase, TransformedEnv
from torchrl.envs.utils import check_env_specs

from tdppo.transforms import (
    RunningObservationNorm,
    RunningRewardNorm,
    obs_norm_step,
    reward_norm_step,
)

N, D, T_MAX = 4, 3, 64
EPS, GAMMA = 1e-8, 0.99
_rng = np.random.default_rng(0)
OBS = _rng.normal([10.0, -5.0, 1000.0], [1.0, 3.0, 0.1], size=(T_MAX, N, D)).astype(np.float32)
REW = _rng.normal(0.5, 2.0, size=(T_MAX, N)).astype(np.float32)
JUNK = 1e6  # what TableEnv emits for rows that are not being reset: must never be counted
NEVER = 10**6


class TableEnv(EnvBase):
    """Stateless batched env: observation ``OBS[t]``, reward ``REW[t]``; env ``e`` ends when
    ``t == ep_len[e]`` (terminated if ``terminates[e]`` else truncated). Honours ``"_reset"``."""

    def __init__(self, ep_len=(NEVER,) * N, terminates=(True, False, True, False)):
        super().__init__(batch_size=[N])
        self.obs_table = torch.as_tensor(OBS)
        self.rew_table = torch.as_tensor(REW)
        self.ep_len = torch.as_tensor(ep_len).reshape(N, 1)
        self.terminates = torch.as_tensor(terminates).reshape(N, 1)
        self.observation_spec = Composite(
            observation=Unbounded((N, D), dtype=torch.float32),
            t=Unbounded((N, 1), dtype=torch.int64),
            shape=(N,),
        )
        self.action_spec = Unbounded((N, 1))
        self.reward_spec = Unbounded((N, 1))
        flag = dict(shape=(N, 1), dtype=torch.bool)
        self.full_done_spec = Composite(
            done=Unbounded(**flag), terminated=Unbounded(**flag), truncated=Unbounded(**flag),
            shape=(N,),
        )  # fmt: skip

    def _reset(self, td):
        reset = None if td is None else td.get("_reset", None)
        mask = torch.ones(N, dtype=torch.bool) if reset is None else reset.reshape(N)
        obs = torch.where(mask[:, None], self.obs_table[0], torch.full((N, D), JUNK))
        false = torch.zeros(N, 1, dtype=torch.bool)
        return TensorDict(
            observation=obs, t=torch.zeros(N, 1, dtype=torch.int64),
            done=false, terminated=false.clone(), truncated=false.clone(), batch_size=[N],
        )  # fmt: skip

    def _step(self, td):
        t = td["t"] + 1
        idx = t.squeeze(-1).clamp(max=T_MAX - 1)
        end = t >= self.ep_len
        return TensorDict(
            observation=self.obs_table[idx, torch.arange(N)],
            t=t,
            reward=self.rew_table[idx, torch.arange(N)][:, None],
            done=end, terminated=end & self.terminates, truncated=end & ~self.terminates,
            batch_size=[N],
        )  # fmt: skip

    def _set_seed(self, seed):
        return seed


class ArrayVectorEnv(gym.vector.VectorEnv):
    """gymnasium vector env emitting the same tables (no episode end)."""

    def __init__(self, autoreset_mode=AutoresetMode.NEXT_STEP):
        self.num_envs = N
        self.metadata = {"autoreset_mode": autoreset_mode}
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (D,), np.float64)
        self.observation_space = batch_space(self.single_observation_space, N)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = batch_space(self.single_action_space, N)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return OBS[0].astype(np.float64), {}

    def step(self, actions):
        self.t += 1
        no = np.zeros(N, dtype=bool)
        return OBS[self.t].astype(np.float64), REW[self.t].astype(np.float64), no, no, {}


def make_env(ep_len=(NEVER,) * N, obs_kw=None, rew_kw=None):
    obs_t = RunningObservationNorm(**(obs_kw or {}))
    rew_t = RunningRewardNorm(**(rew_kw or {}))
    return TransformedEnv(TableEnv(ep_len), Compose(obs_t, rew_t)), obs_t, rew_t


def no_done(n: int) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(n, 1, dtype=torch.bool) for k in ("terminated", "done")}


def snapshot(module) -> TensorDict:
    return TensorDict.from_module(module).clone()


def assert_td_equal(a: TensorDict, b: TensorDict):
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for k in a.keys(True, True):
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def pooled(xs: list[np.ndarray], prior: float = 1e-4):
    """numpy float64 statistics of everything counted so far, with gymnasium's prior
    (a pseudo-sample of weight 1e-4, mean 0, var 1); two-pass, no running merge."""
    x = np.concatenate([np.asarray(v, dtype=np.float64) for v in xs])
    total = x.shape[0] + prior
    mean = x.sum(0) / total
    var = (prior * (1.0 + mean**2) + ((x - mean) ** 2).sum(0)) / total
    return mean, var


# ----------------------------------------------------------------- gymnasium, no episode end


def test_observation_matches_gymnasium_normalize_observation():
    env, _, _ = make_env()
    ro = env.rollout(40)
    ref = NormalizeObservation(ArrayVectorEnv(), epsilon=EPS)
    obs0, _ = ref.reset()
    np.testing.assert_allclose(ro["observation"][:, 0].numpy(), obs0, atol=1e-5, rtol=0)
    for k in range(40):
        obs, *_ = ref.step(np.zeros((N, 1), np.float32))
        np.testing.assert_allclose(ro["next", "observation"][:, k].numpy(), obs, atol=1e-5)
    assert ro["next", "observation"].dtype == torch.float32


def test_reward_matches_gymnasium_normalize_reward():
    env, _, _ = make_env()
    ro = env.rollout(40)
    ref = NormalizeReward(ArrayVectorEnv(AutoresetMode.SAME_STEP), gamma=GAMMA, epsilon=EPS)
    ref.reset()
    for k in range(40):
        _, rew, *_ = ref.step(np.zeros((N, 1), np.float32))
        np.testing.assert_allclose(ro["next", "reward"][:, k, 0].numpy(), rew, rtol=1e-5)


# ------------------------------------------- terminations, truncations, resets: numpy float64


def test_episode_ends_against_float64_same_step_recomputation():
    ep_len = (3, 5, 4, 7)  # envs 0, 2 terminate; 1, 3 truncate
    env, obs_t, rew_t = make_env(ep_len)
    ro = env.rollout(30, break_when_any_done=False)
    t_next = ro["next", "t"][..., 0].numpy()  # [N, T]
    counted = [OBS[0]]  # the first reset counts every env
    m, v = pooled(counted)
    np.testing.assert_allclose(ro["observation"][:, 0].numpy(), (OBS[0] - m) / np.sqrt(v + EPS))
    acc, returns = np.zeros(N), []
    for k in range(30):
        tn = t_next[:, k]
        obs, r = OBS[tn, np.arange(N)], REW[tn, np.arange(N)].astype(np.float64)
        ends = tn >= np.array(ep_len)
        term = ends & np.array([True, False, True, False])
        # observation: the whole batch counted once, then normalized
        counted.append(obs)
        m, v = pooled(counted)
        want = (obs - m) / np.sqrt(v + EPS)
        np.testing.assert_allclose(ro["next", "observation"][:, k].numpy(), want, atol=2e-6)
        # reward: acc = acc * gamma * (1 - terminated) + r; stats of every acc; divide; zero
        acc = acc * GAMMA * (1 - term) + r
        returns.append(acc.copy())
        _, rv = pooled(returns)
        np.testing.assert_allclose(ro["next", "reward"][:, k, 0].numpy(), r / np.sqrt(rv + EPS))
        acc[ends] = 0.0
        assert np.array_equal(ro["next", "done"][:, k, 0].numpy(), ends)
        if k + 1 < 30 and ends.any():  # partial reset: only the finished envs are counted
            counted.append(OBS[0][ends])
            m, v = pooled(counted)
            got = ro["observation"][:, k + 1].numpy()
            np.testing.assert_allclose(got[ends], ((OBS[0] - m) / np.sqrt(v + EPS))[ends])
            assert np.array_equal(got[~ends], ro["next", "observation"][:, k].numpy()[~ends])
    m, v = pooled(counted)
    np.testing.assert_allclose(obs_t.mean.numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(obs_t.var.numpy(), v, rtol=1e-9)
    assert float(obs_t.count) == pytest.approx(sum(len(c) for c in counted) + 1e-4, rel=1e-15)
    np.testing.assert_allclose(rew_t.acc[:, 0].numpy(), acc, rtol=1e-12)


def test_partial_reset_counts_only_reset_rows_and_keeps_the_others():
    env, obs_t, _ = make_env()
    td = env.reset()
    for _ in range(3):
        _, td = env.step_and_maybe_reset(env.rand_action(td))
    before = td["observation"].clone()
    mask = torch.tensor([True, False, False, True])
    td.set("_reset", mask[:, None])
    out = env.reset(td)
    # the env emitted JUNK (1e6) for rows 1 and 2: counting them would wreck the statistics
    counted = [OBS[0], OBS[1], OBS[2], OBS[3], OBS[0][mask.numpy()]]
    m, v = pooled(counted)
    np.testing.assert_allclose(obs_t.mean.numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(obs_t.var.numpy(), v, rtol=1e-9)
    assert float(obs_t.count) == pytest.approx(4 * N + 2 + 1e-4, rel=1e-15)
    assert torch.equal(out["observation"][~mask], before[~mask])
    want = (OBS[0] - m) / np.sqrt(v + EPS)
    np.testing.assert_allclose(out["observation"][mask].numpy(), want[mask.numpy()], rtol=1e-6)


def test_reset_hook_keeps_rows_not_reset_from_its_input():
    # TransformedEnv hands Transform._reset only the reset keys, so exercise the hook directly
    t = RunningObservationNorm(shape=(D,))
    prev = torch.linspace(-1.0, 1.0, N * D).reshape(N, D)
    mask = torch.tensor([[False], [True], [False], [True]])
    raw = torch.where(mask, torch.as_tensor(OBS[0]), JUNK)
    out = t._reset(
        TensorDict({"_reset": mask, "observation": prev}, batch_size=[N]),
        TensorDict(observation=raw, batch_size=[N]),
    )["observation"]
    m, v = pooled([OBS[0][[1, 3]]])
    assert torch.equal(out[[0, 2]], prev[[0, 2]])
    np.testing.assert_allclose(
        out[[1, 3]].numpy(), (OBS[0][[1, 3]] - m) / np.sqrt(v + EPS), rtol=1e-6
    )
    np.testing.assert_allclose(t.mean.numpy(), m, rtol=1e-12)


# ----------------------------------------------------------- pure functions == transform path


def test_pure_functions_equal_transform_step_for_step():
    ep_len = (3, 5, 4, 7)
    env, obs_t, rew_t = make_env(ep_len, obs_kw={"clip": 5.0}, rew_kw={"clip": 10.0})
    so, sr = snapshot(obs_t), snapshot(rew_t)
    ro = env.rollout(20, break_when_any_done=False)
    kw = dict(eps=EPS, update=True)
    so, out = obs_norm_step(so, torch.as_tensor(OBS[0]), None, clip=5.0, **kw)
    assert torch.equal(out, ro["observation"][:, 0])
    for k in range(20):
        tn = ro["next", "t"][:, k, 0]
        obs = torch.as_tensor(OBS)[tn, torch.arange(N)]
        rew = torch.as_tensor(REW)[tn, torch.arange(N)][:, None]
        term, done = ro["next", "terminated"][:, k], ro["next", "done"][:, k]
        so, out = obs_norm_step(so, obs, None, clip=5.0, **kw)
        assert torch.equal(out, ro["next", "observation"][:, k])
        sr, out = reward_norm_step(sr, rew, term, done, clip=10.0, **kw)
        assert torch.equal(out, ro["next", "reward"][:, k])
        if k + 1 < 20 and done.any():
            mask = done[:, 0]
            raw = torch.where(mask[:, None], torch.as_tensor(OBS[0]), JUNK)
            so, out = obs_norm_step(so, raw, mask, clip=5.0, **kw)
            assert torch.equal(out[mask], ro["observation"][:, k + 1][mask])
    assert_td_equal(so, snapshot(obs_t))
    assert_td_equal(sr, snapshot(rew_t))


def _both_steps(so, sr, obs, mask, rew, term, done):
    so, out_o = obs_norm_step(so, obs, mask, eps=EPS, clip=None, update=True)
    sr, out_r = reward_norm_step(sr, rew, term, done, eps=EPS, clip=None, update=True)
    return so, sr, out_o, out_r


@pytest.mark.compile
def test_pure_functions_compiled_equal_eager_without_recompiling():
    torch._dynamo.reset()
    rng = np.random.default_rng(7)
    compiled = torch.compile(_both_steps, fullgraph=True)  # one graph: one (slow) compilation
    eager = (snapshot(RunningObservationNorm(shape=(D,))), snapshot(RunningRewardNorm((N,))))
    comp = (eager[0].clone(), eager[1].clone())
    for k in range(4):
        mask = torch.as_tensor(rng.random(N) < 0.7)  # (mask=None: same code, eager-tested)
        term = torch.as_tensor(rng.random((N, 1)) < 0.3)
        done = term | torch.as_tensor(rng.random((N, 1)) < 0.3)
        args = (torch.as_tensor(OBS[k]), mask, torch.as_tensor(REW[k])[:, None], term, done)
        *eager, out_o, out_r = _both_steps(*eager, *args)
        with torch._dynamo.config.patch(error_on_recompile=k > 0):
            *comp, cout_o, cout_r = compiled(*comp, *args)
        torch.testing.assert_close(cout_o, out_o, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cout_r, out_r, rtol=1e-6, atol=1e-6)
        for a, b in zip(comp, eager, strict=True):
            assert set(a.keys()) == set(b.keys())
            for key in b.keys():
                torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=0)


def test_pure_functions_vmap_over_a_population():
    rng = np.random.default_rng(9)
    P = 3
    so = torch.stack([snapshot(RunningObservationNorm(shape=(D,))) for _ in range(P)])
    sr = torch.stack([snapshot(RunningRewardNorm((N,))) for _ in range(P)])
    obs = torch.as_tensor(OBS[:P])  # member p sees OBS[p]
    mask = torch.as_tensor(rng.random((P, N)) < 0.7)
    rew = torch.as_tensor(REW[:P])[..., None]
    term = torch.as_tensor(rng.random((P, N, 1)) < 0.3)
    kw = dict(eps=EPS, clip=2.0, update=True)
    vo, oo = torch.vmap(lambda s, o, m: obs_norm_step(s, o, m, **kw))(so, obs, mask)
    vr, orr = torch.vmap(lambda s, r, t: reward_norm_step(s, r, t, t, **kw))(sr, rew, term)
    for p in range(P):
        eo, oe = obs_norm_step(so[p], obs[p], mask[p], **kw)
        er, re_ = reward_norm_step(sr[p], rew[p], term[p], term[p], **kw)
        torch.testing.assert_close(oo[p], oe, rtol=1e-6, atol=0)
        torch.testing.assert_close(orr[p], re_, rtol=1e-6, atol=0)
        for a, b in ((vo[p], eo), (vr[p], er)):
            for key in b.keys():
                torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=0)


# ------------------------------------------------------------------------ frozen / eval


def _stat_values(*ts):
    return [getattr(t, k).clone() for t in ts for k in ("mean", "var", "count")]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_frozen_and_eval_leave_statistics_unchanged_for_1000_steps():
    obs_t, rew_t = RunningObservationNorm(shape=(D,)), RunningRewardNorm((N,))
    rng = np.random.default_rng(8)
    steps = [
        TensorDict(
            observation=torch.as_tensor(OBS[k % T_MAX]),
            reward=torch.as_tensor(REW[k % T_MAX])[:, None],
            terminated=torch.as_tensor(rng.random((N, 1)) < 0.05),
            done=torch.as_tensor(rng.random((N, 1)) < 0.1),
            batch_size=[N],
        )
        for k in range(1000)
    ]
    for td in steps[:5]:
        rew_t(obs_t(td.clone()))
    ref = _stat_values(obs_t, rew_t)
    obs_t.freeze(), rew_t.freeze()
    for td in steps:
        out = rew_t(obs_t(td.clone()))
    assert _same(_stat_values(obs_t, rew_t), ref) and bool(obs_t.frozen) and bool(rew_t.frozen)
    assert not torch.equal(out["observation"], steps[-1]["observation"])  # still normalized
    obs_t.unfreeze(), rew_t.unfreeze()
    obs_t.eval(), rew_t.eval()
    for td in steps:
        rew_t(obs_t(td.clone()))
    assert _same(_stat_values(obs_t, rew_t), ref)
    obs_t.train(), rew_t.train()
    rew_t(obs_t(steps[0].clone()))
    new = _stat_values(obs_t, rew_t)
    assert not torch.equal(new[2], ref[2]) and not torch.equal(new[5], ref[5])


def test_env_eval_and_train_switch_updates_torchrl_attach_does_not():
    env, obs_t, rew_t = make_env(ep_len=(3, 5, 4, 7))
    assert obs_t.training and rew_t.training  # TorchRL's attach-time eval() is ignored
    env.rollout(5, break_when_any_done=False)
    ref = _stat_values(obs_t, rew_t)
    env.eval()
    assert not obs_t.training and not rew_t.training
    env.rollout(30, break_when_any_done=False)
    assert _same(_stat_values(obs_t, rew_t), ref)
    env.train()
    env.rollout(2, break_when_any_done=False)
    new = _stat_values(obs_t, rew_t)
    assert not torch.equal(new[2], ref[2]) and not torch.equal(new[5], ref[5])
    t3 = RunningObservationNorm(in_keys=["observation"], out_keys=["obs2"])
    env.append_transform(t3)  # Compose.append also calls eval(): still updating
    env.rollout(2)
    assert t3.training and float(t3.count) > 1


# ------------------------------------------------------------------------ state round trip


def test_state_round_trip_through_memmap_is_bit_exact(tmp_path):
    env_a, _, _ = make_env(ep_len=(3, 5, 4, 7))
    td = env_a.rollout(17, break_when_any_done=False)[..., -1]
    _, td = env_a.step_and_maybe_reset(td)  # mid-episode: acc is non-zero somewhere
    TensorDict.from_module(env_a.transform).memmap(tmp_path)
    saved = snapshot(env_a.transform)
    loaded = TensorDict.load_memmap(tmp_path)
    assert_td_equal(loaded, saved)
    assert bool((saved["transforms", "1", "acc"] != 0).any())

    env_b, _, _ = make_env(ep_len=(3, 5, 4, 7))  # shape inferred, never run
    env_b.load_state_dict(loaded.clone().flatten_keys(".").to_dict())
    env_c = TransformedEnv(
        TableEnv((3, 5, 4, 7)),
        Compose(RunningObservationNorm(shape=(D,)), RunningRewardNorm(batch_shape=(N,))),
    )
    loaded.clone().to_module(env_c.transform)
    for env in (env_b, env_c):
        assert_td_equal(snapshot(env.transform), saved)
    for _ in range(12):
        outs = [e.step_and_maybe_reset(td.clone()) for e in (env_a, env_b, env_c)]
        for step, nxt in outs[1:]:
            assert_td_equal(step, outs[0][0])
            assert_td_equal(nxt, outs[0][1])
        td = outs[0][1]
    assert_td_equal(snapshot(env_b.transform), snapshot(env_a.transform))
    assert_td_equal(TensorDict.load_memmap(tmp_path), saved)  # files untouched by training


def test_load_into_instance_built_without_shape():
    src = RunningObservationNorm(shape=(D,))
    src(TensorDict(observation=torch.as_tensor(OBS[:5]).reshape(-1, D), batch_size=[5 * N]))
    dst = RunningObservationNorm()  # TorchRL's ObservationNorm fails here (uninitialized)
    dst.load_state_dict(src.state_dict())
    assert_td_equal(snapshot(dst), snapshot(src))
    r_src, r_dst = RunningRewardNorm((N,), gamma=0.9), RunningRewardNorm(gamma=0.5)
    r_src.acc.fill_(3.0)
    r_dst.load_state_dict(r_src.state_dict())
    assert_td_equal(snapshot(r_dst), snapshot(r_src))
    assert float(r_dst.gamma) == 0.9


@pytest.mark.parametrize(
    "missing", ["transforms.0.count", "transforms.1.acc", "transforms.1.gamma"]
)
@pytest.mark.parametrize("strict", [True, False])
def test_missing_state_key_is_an_error_naming_it(missing, strict):
    env_a, _, _ = make_env()
    env_a.rollout(3)
    sd = env_a.state_dict()
    del sd[missing]
    env_b, obs_b, _ = make_env()
    with pytest.raises(RuntimeError, match=missing.replace(".", r"\.")):
        env_b.load_state_dict(sd, strict=strict)


# -------------------------------------------------------------------------------- bad input


def test_nonfinite_observation_raises_before_touching_stats():
    t = RunningObservationNorm(shape=(D,))
    t(TensorDict(observation=torch.as_tensor(OBS[0]), batch_size=[N]))
    before = snapshot(t)
    bad = torch.as_tensor(OBS[1]).clone()
    bad[1, 2], bad[3, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"2 non-finite.*'observation'"):
        t(TensorDict(observation=bad, batch_size=[N]))
    assert_td_equal(snapshot(t), before)


def test_nonfinite_skip_mode_counts_and_keeps_stats():
    t = RunningObservationNorm(shape=(D,), nan_policy="skip")
    r = RunningRewardNorm((N,), nan_policy="skip")
    flags = dict(
        terminated=torch.zeros(N, 1, dtype=torch.bool), done=torch.zeros(N, 1, dtype=torch.bool)
    )
    t(TensorDict(observation=torch.as_tensor(OBS[0]), batch_size=[N]))
    r(TensorDict(reward=torch.as_tensor(REW[0])[:, None], **flags, batch_size=[N]))
    before_o, before_r = snapshot(t), snapshot(r)
    bad = torch.as_tensor(OBS[1]).clone()
    bad[0, 0] = float("nan")
    out = t(TensorDict(observation=bad, batch_size=[N]))["observation"]
    bad_r = torch.as_tensor(REW[1])[:, None].clone()
    bad_r[2, 0] = float("-inf")
    out_r = r(TensorDict(reward=bad_r, **flags, batch_size=[N]))["reward"]
    assert int(t.nonfinite) == 1 and int(r.nonfinite) == 1
    for new, old in ((snapshot(t), before_o), (snapshot(r), before_r)):
        for k in ("mean", "var", "count", "loc", "scale", "acc"):
            if k in old.keys():
                assert torch.equal(new[k], old[k]), k
    m, v = before_o["mean"].numpy(), before_o["var"].numpy()
    np.testing.assert_allclose(out[1:].numpy(), ((OBS[1] - m) / np.sqrt(v + EPS))[1:], rtol=1e-6)
    assert torch.isfinite(out_r[[0, 1, 3]]).all()


def test_nonfinite_reward_raises():
    env, _, rew_t = make_env()
    env.rollout(2)
    before = snapshot(rew_t)
    bad = torch.full((N, 1), float("nan"))
    flags = dict(
        terminated=torch.zeros(N, 1, dtype=torch.bool), done=torch.zeros(N, 1, dtype=torch.bool)
    )
    with pytest.raises(ValueError, match=r"4 non-finite.*'reward'"):
        rew_t(TensorDict(reward=bad, **flags, batch_size=[N]))
    assert_td_equal(snapshot(rew_t), before)


def test_wrong_shapes_name_expected_and_received():
    t = RunningObservationNorm(shape=(D,))
    with pytest.raises(ValueError, match=r"3.*\(4, 5\)"):
        t(TensorDict(observation=torch.zeros(4, 5), batch_size=[4]))
    r = RunningRewardNorm((N,))
    flags = dict(
        terminated=torch.zeros(2, 1, dtype=torch.bool), done=torch.zeros(2, 1, dtype=torch.bool)
    )
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(2, 1\)"):
        r(TensorDict(reward=torch.zeros(2, 1), **flags, batch_size=[2]))


# -------------------------------------------------------------------- specs and containers


@pytest.mark.parametrize("clip", [None, 3.0])
def test_check_env_specs_and_spec_transform(clip):
    env, _, _ = make_env(ep_len=(3, 5, 4, 7), obs_kw={"clip": clip}, rew_kw={"clip": clip})
    check_env_specs(env)
    obs_spec = env.observation_spec["observation"]
    rew_spec = env.reward_spec
    assert obs_spec.shape == (N, D) and obs_spec.dtype == torch.float32
    if clip is None:
        assert isinstance(obs_spec, Unbounded) and isinstance(rew_spec, Unbounded)
    else:
        assert isinstance(obs_spec, Bounded) and isinstance(rew_spec, Bounded)
        assert float(obs_spec.space.high.max()) == clip and float(rew_spec.space.low.min()) == -clip
        ro = env.rollout(20, break_when_any_done=False)
        assert ro["next", "observation"].abs().max() <= clip


def test_applied_directly_in_compose_and_to_other_out_key():
    # direct application of a Compose: one update per call with the whole batch
    t = RunningObservationNorm(in_keys=["observation"], out_keys=["obs_norm"], shape=(D,))
    comp = Compose(t)
    td = TensorDict(observation=torch.as_tensor(OBS[:3]), batch_size=[3, N])  # 2 batch dims
    out = comp(td)
    m, v = pooled([OBS[:3].reshape(-1, D)])
    np.testing.assert_allclose(out["obs_norm"].numpy(), (OBS[:3] - m) / np.sqrt(v + EPS), rtol=1e-6)
    assert torch.equal(out["observation"], torch.as_tensor(OBS[:3]))  # input left as it was
    np.testing.assert_allclose(t.mean.numpy(), m, rtol=1e-12)
    t.eval()  # eval on the transform itself also stops updates
    before = snapshot(t)
    comp(TensorDict(observation=torch.as_tensor(OBS[5]), batch_size=[N]))
    assert_td_equal(snapshot(t), before)


def test_shape_inferred_from_parent_spec_and_unattached_without_shape_errors():
    env, obs_t, rew_t = make_env()
    assert obs_t.mean.shape == (D,) and obs_t.loc.dtype == torch.float32
    assert rew_t.acc.shape == (N, 1)
    with pytest.raises(RuntimeError, match="shape"):
        RunningObservationNorm()(TensorDict(observation=torch.zeros(2, D), batch_size=[2]))
