"""tdppo.population: member i of a vmapped population is the single-agent run of its config.

Reference: ``tdppo.train`` (the trainer's own loop, one agent, its own collector and update)
with the member's seed and hyperparameters, compared after one update (its first checkpoint)
and after several (the end of the run). Exactness: every member's env, normalizers, keys and
counters are bit-identical to its single-agent run when actions are discrete (CartPole); the
parameters differ by float32 rounding (~1e-7) because a one-output linear layer (the critic
head, the Pendulum policy head) runs BLAS ``gemv`` alone and a batched ``bmm`` under vmap. With
continuous actions that rounding reaches the pendulum's state, so Pendulum is compared within
1e-5 (atol and rtol) after one and four updates.
"""

from __future__ import annotations

import csv

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from tensordict import TensorDict

from tdppo import Config, jit, train
from tdppo.checkpoint import load_checkpoint, save_checkpoint
from tdppo.jit import captured
from tdppo.policy import config_of, load_policy
from tdppo.population import SWEEPABLE, member_configs, member_state, population_configs
from tdppo.state import EXACT_KEYS


def train_population(config, seeds, sweep=None):
    """The population driver: ``tdppo.train`` with ``seeds`` (and ``sweep``)."""
    return train(config, seeds=seeds, sweep=sweep)


SMALL = dict(
    num_envs=4, num_steps=32, epochs=2, minibatches=4, quiet=True, eval_episodes=0, compile=False
)
PER_UPDATE = 4 * 32


def _cfg(env: str, run_dir, updates: int, **kw) -> Config:
    return Config.for_env(env, frames=updates * PER_UPDATE, run_dir=str(run_dir), **{**SMALL, **kw})


def _with(cfg: Config, **kw) -> Config:
    return cfg.__class__(**{**cfg.__dict__, **kw})


def _after(run_dir, updates: int) -> TensorDict:
    return load_checkpoint(run_dir / "checkpoints" / f"{updates * PER_UPDATE:012d}")


def _compare(member: TensorDict, single: TensorDict, exact=(), atol=0.0, rtol=0.0) -> None:
    """Every leaf of EXACT_KEYS: same keys, shapes, dtypes; bit-equal under ``exact`` keys,
    else within ``atol + rtol * |single|``."""
    for top in EXACT_KEYS:
        got, want = member[top].flatten_keys("/"), single[top].flatten_keys("/")
        assert set(got.keys()) == set(want.keys()), top
        for k in want.keys():
            a, b = got[k], want[k]
            assert a.dtype == b.dtype and a.shape == b.shape, f"{top}/{k}"
            if top in exact or not a.dtype.is_floating_point:
                assert torch.equal(a, b), f"{top}/{k} differs"
            else:
                torch.testing.assert_close(
                    a, b, atol=atol, rtol=rtol, msg=lambda m, where=f"{top}/{k}": f"{where}: {m}"
                )


# ----------------------------------------------------------------------------- members


def test_members_are_the_product_of_sweep_and_seeds():
    base = Config.for_env("CartPole-v1", **SMALL)
    cfgs = member_configs(base, [3, 5], {"lr": [1e-3, 1e-4], "gamma": [0.9]})
    got = [(c.lr, c.gamma, c.seed) for c in cfgs]
    assert got == [(1e-3, 0.9, 3), (1e-3, 0.9, 5), (1e-4, 0.9, 3), (1e-4, 0.9, 5)]
    assert all(c.num_envs == 4 and c.env == "CartPole-v1" for c in cfgs)


@pytest.mark.parametrize("field", ["hidden", "num_envs", "env", "seed", "lambda"])
def test_sweep_rejects_other_fields(field):
    with pytest.raises(ValueError) as e:
        member_configs(Config(), [0], {field: [1.0, 2.0]})
    msg = str(e.value)
    assert "\n" not in msg and repr(field) in msg
    assert all(name in msg for name in SWEEPABLE)


def test_population_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one seed"):
        member_configs(Config(), [])
    with pytest.raises(ValueError, match="no values"):
        member_configs(Config(), [0], {"lr": []})
    with pytest.raises(ValueError, match="gamma must be in"):
        member_configs(Config(), [0], {"gamma": [1.5]})
    for kw in (dict(env="HalfCheetah-v5"), dict(env="CartPole-v1", backend="gym")):
        with pytest.raises(ValueError, match="built-in torch envs only") as e:
            train_population(_with(_cfg("CartPole-v1", tmp_path, 1), **kw), [0])
        assert "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------- == single agent


def test_members_equal_single_agent_runs_cartpole(tmp_path):
    """Discrete actions: env, normalizers, keys, counters bit-exact after 1 and 10 updates
    (with a learning-rate schedule: each member anneals its own lr)."""
    updates = 10
    base = _cfg(
        "CartPole-v1", tmp_path / "pop", updates, checkpoint_every=PER_UPDATE, keep=20,
        anneal_frames=2000,
    )  # fmt: skip
    pop = train_population(base, seeds=[0, 7], sweep={"lr": [1e-3, 2.5e-4], "ent_coef": [0.02]})
    cfgs = population_configs(pop)
    assert [(c.lr, c.seed) for c in cfgs] == [(1e-3, 0), (1e-3, 7), (2.5e-4, 0), (2.5e-4, 7)]
    exact = ("env", "transforms", "rng", "counters")
    for i in (0, 3):  # the two extremes: (lr 1e-3, seed 0) and (lr 2.5e-4, seed 7)
        run = tmp_path / f"single{i}"
        single = train(_with(cfgs[i], run_dir=str(run), checkpoint_every=PER_UPDATE, keep=20))
        first = member_state(_after(tmp_path / "pop", 1), i)
        _compare(first, _after(run, 1), exact=exact, atol=1e-6, rtol=1e-5)
        _compare(member_state(pop, i), single, exact=exact, atol=1e-6, rtol=1e-5)
    # the members really differ (different seeds; different lr)
    assert not torch.equal(pop["env", "state"][0], pop["env", "state"][1])
    assert not torch.equal(pop["policy"][0]["module", "0", "module", "0", "weight"],
                           pop["policy"][2]["module", "0", "module", "0", "weight"])  # fmt: skip


def test_members_equal_single_agent_runs_pendulum_with_own_normalizers(tmp_path):
    """Continuous actions, a gamma sweep: within 1e-5 after 1 and 4 updates; each member's
    normalizer statistics (and the reward normalizer's gamma) are its own."""
    updates = 4
    base = _cfg("Pendulum-v1", tmp_path / "pop", updates, checkpoint_every=PER_UPDATE, keep=10)
    pop = train_population(base, seeds=[1, 2], sweep={"gamma": [0.99, 0.9]})
    cfgs = population_configs(pop)
    norm = pop["transforms", "transforms"]
    assert norm["2", "gamma"].tolist() == [0.99, 0.99, 0.9, 0.9]
    for a, b in [(0, 1), (0, 2), (1, 3)]:  # other seed, or same seed and other gamma
        assert not torch.equal(norm["2", "var"][a], norm["2", "var"][b])
    assert not torch.equal(norm["1", "mean"][0], norm["1", "mean"][1])
    for i in (1, 2):
        run = tmp_path / f"single{i}"
        single = train(_with(cfgs[i], run_dir=str(run), checkpoint_every=PER_UPDATE, keep=10))
        first = member_state(_after(tmp_path / "pop", 1), i)
        _compare(first, _after(run, 1), exact=("rng", "counters"), atol=1e-5, rtol=1e-5)
        # after 4 updates the float32 rounding of vmapped and single matmuls has compounded
        # through Pendulum's dynamics: 3.5e-5 relative in the reward normalizer's return
        # accumulator on an AVX-512 Xeon (another member's gamma or statistics differ by O(1))
        _compare(member_state(pop, i), single, exact=("rng", "counters"), atol=1e-5, rtol=2e-4)


# ----------------------------------------------------------------------------- files


def test_checkpoint_metrics_and_member_state(tmp_path):
    base = _cfg("CartPole-v1", tmp_path, 2, log_every=1)
    pop = train_population(base, seeds=[4, 5], sweep={"clip_eps": [0.2, 0.1]})
    members = 4
    # one checkpoint holds every member, bit for bit
    loaded = load_checkpoint(tmp_path)
    for top in (*EXACT_KEYS, "hp"):
        assert loaded[top].batch_size == torch.Size([members])
        for k, v in pop[top].flatten_keys("/").items():
            assert torch.equal(loaded[top].flatten_keys("/")[k], v), f"{top}/{k}"
    assert loaded["hp", "clip_eps"].tolist() == [0.2, 0.2, 0.1, 0.1]
    # metrics.csv: one row per member per logged update
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == members * 2
    assert [int(r["member"]) for r in rows] == [0, 1, 2, 3] * 2
    assert [int(r["seed"]) for r in rows[:4]] == [4, 5, 4, 5]
    assert [float(r["sweep_clip_eps"]) for r in rows[:4]] == [0.2, 0.2, 0.1, 0.1]
    assert {int(r["frames"]) for r in rows[4:]} == {2 * PER_UPDATE}
    # member_state: the single-agent layout, its own config; loadable by load_policy
    one = member_state(loaded, 3)
    assert one["policy"].batch_size == torch.Size([])
    assert config_of(one).seed == 5 and config_of(one).clip_eps == 0.1
    path = save_checkpoint(tmp_path / "m3", one, frames=256, config=config_of(one).to_dict())
    policy = load_policy(path)
    obs = torch.randn(5, 4)
    from tdppo import nets
    from tdppo.setup import build_components

    _, actor, _ = build_components(config_of(one), torch.device("cpu"))
    norm = one["transforms", "transforms", "1"]
    x = ((obs.double() - norm["mean"]) / torch.sqrt(norm["var"] + 1e-8)).clamp(-10, 10).float()
    expected = nets.mode(nets.dist_params(actor, one["policy"], x))
    assert torch.equal(policy(obs), expected)
    with pytest.raises(IndexError, match="4 members"):
        member_state(pop, 4)


def test_resume_is_the_uninterrupted_population(tmp_path):
    seeds, sweep = [0, 1], {"vf_coef": [0.5, 1.0]}
    straight = train_population(_cfg("CartPole-v1", tmp_path / "a", 4), seeds, sweep)
    train_population(_cfg("CartPole-v1", tmp_path / "b", 2), seeds, sweep)
    resumed = train_population(_cfg("CartPole-v1", tmp_path / "b", 4, resume=True), seeds, sweep)
    for top in (*EXACT_KEYS, "hp"):
        for k, v in straight[top].flatten_keys("/").items():
            assert torch.equal(resumed[top].flatten_keys("/")[k], v), f"{top}/{k}"
    with open(tmp_path / "b" / "metrics.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4 * 4
    with pytest.raises(ValueError, match="seeds / sweep"):
        train_population(_cfg("CartPole-v1", tmp_path / "b", 6, resume=True), [0, 2], sweep)


# ----------------------------------------------------------------------------- compiled


def test_captured_tells_a_graph_from_an_eager_fallback():
    from tdppo.jit import compiled as _compiled

    def add_one(x):
        return x + 1

    def outer(x):  # dynamo cannot trace into the disabled function: no graph, runs eagerly
        return torch._dynamo.disable(add_one)(x)

    with_graph = _compiled(add_one, backend="eager")
    fallback = torch.compile(outer, backend="eager")
    fallback.__tdppo_code__ = outer.__code__
    assert not captured(with_graph)  # not called yet
    with_graph(torch.zeros(3))
    fallback(torch.zeros(3))
    assert captured(with_graph)
    assert not captured(fallback)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.xdist_group("tiny-compiled")
def test_compiled_population_captures_graphs_and_never_recompiles(tmp_path, monkeypatch):
    """The vmapped env step and minibatch step are one AOT package each per run (traced, or
    found through the index when an earlier run traced them); another population of the same
    size (other seeds and hyperparameters) has the same two graphs, so it finds those packages
    through the index without tracing, and compiles nothing."""
    built, compiled_packages, traced = [], [], []
    real_build, real_package = jit._Variant.build.__func__, jit._compile_package
    real_indexed, real_trace = jit._Variant.indexed.__func__, jit._Traced.of.__func__

    def spy_build(cls, fn, args, leaves, **kw):
        v = real_build(cls, fn, args, leaves, **kw)
        built.append(v.path)
        return v

    def spy_indexed(cls, recipe, args):
        v = real_indexed(cls, recipe, args)
        if v is not None:
            built.append(v.path)
        return v

    def spy_trace(cls, *a):
        traced.append(a)
        return real_trace(cls, *a)

    monkeypatch.setattr(jit._Variant, "build", classmethod(spy_build))
    monkeypatch.setattr(jit._Variant, "indexed", classmethod(spy_indexed))
    monkeypatch.setattr(jit._Traced, "of", classmethod(spy_trace))
    monkeypatch.setattr(
        jit, "_compile_package", lambda gm, lv, path: compiled_packages.append(path)
        or real_package(gm, lv, path),
    )  # fmt: skip
    # tests/test_driver.py's compiled population, so the two share their packages
    kw = dict(compile=True, hidden=(8,), num_steps=4, minibatches=2, epochs=1, threads=1)
    with torch._inductor.config.patch(compile_threads=1):
        compiled = train_population(_cfg("Pendulum-v1", tmp_path / "a", 2, **kw), [0, 1])
        first = list(built)
        assert len(first) == 2  # the collection step and the minibatch step, one variant each
        built.clear()
        compiled_packages.clear()
        traced.clear()
        train_population(
            _cfg("Pendulum-v1", tmp_path / "b", 3, **kw), [5, 6], {"lr": [1e-4], "gamma": [0.9]}
        )
    assert sorted(built) == sorted(first)  # the same graphs: the same packages
    assert compiled_packages == [] and traced == []  # loaded through the index
    eager = train_population(_cfg("Pendulum-v1", tmp_path / "c", 2, **{**kw, "compile": False}),
                             [0, 1])  # fmt: skip
    for top in ("policy", "value", "transforms", "env"):
        for k, v in eager[top].flatten_keys("/").items():
            if v.dtype.is_floating_point:
                torch.testing.assert_close(compiled[top].flatten_keys("/")[k], v, atol=1e-4,
                                           rtol=1e-4, msg=f"{top}/{k}")  # fmt: skip


def test_benchmark_smoke(tmp_path):
    """benchmarks/population.py end to end on 2 tiny agents: files, columns, finite numbers."""
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)
    if "benchmarks" in sys.modules and getattr(sys.modules["benchmarks"], "__file__", None) is None:
        del sys.modules["benchmarks"]  # torchrl's namespace package, not ours
    from benchmarks import population as bench

    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "population_smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["side"].split(":")[0] for r in rows] == [
        "population",
        "sequential",
        "ratio sequential / population",
    ]
    assert all(float(r["total (s)"]) > 0 for r in rows)
    assert "| wall-clock" not in (tmp_path / "population_smoke.md").read_text()
    assert "## wall-clock" in (tmp_path / "population_smoke.md").read_text()
