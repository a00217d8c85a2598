"""Every field of Config reaches the code it names, and validate() refuses non-finite floats.

The field walk: for EVERY field of ``dataclasses.fields(Config)`` a tiny in-process run with
that one field changed is compared with a base run. The witness is the final state (the exact
keys, leaf by leaf with ``torch.equal``) or what the run records (metrics.csv rows, the
checkpoints it keeps, the TensorBoard directory, what it prints). A field added to Config
without a witness here fails ``test_field_changes_the_run[<field>]``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch

import tdppo
from tdppo import Config, jit

EXACT = ("policy", "value", "optimizer", "transforms", "env", "rng", "counters")
TIME_COLUMNS = ("time_s", "sps")  # wall clock: differs between any two runs
BATCH = 16  # num_envs x num_steps of the base
# Pendulum (Box actions: init_log_std matters), 1 update of 2 x 8 frames, 2 minibatches
# (the second one sees a ratio != 1, so clipping can bite), eager, silent, one thread.
BASE = dict(
    env="Pendulum-v1",
    num_envs=2,
    num_steps=8,
    epochs=1,
    minibatches=2,
    frames=BATCH,
    checkpoint_every=0,
    compile=False,
    quiet=True,
    eval_episodes=0,
    threads=1,
)
TWO = dict(frames=2 * BATCH)  # two updates


@dataclasses.dataclass
class Run:
    state: object
    run_dir: Path
    out: str
    threads_after: int  # torch.get_num_threads() right after the run

    @property
    def metrics(self) -> list[dict]:
        with open(self.run_dir / "metrics.csv", newline="") as f:
            return [
                {k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)
            ]

    @property
    def checkpoints(self) -> list[str]:
        return sorted(p.name for p in (self.run_dir / "checkpoints").iterdir())


class Runner:
    """Runs ``tdppo.train(Config(**BASE, **changes))`` once per distinct ``changes``."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[tuple, Run] = {}

    def __call__(self, **changes) -> Run:
        key = tuple(sorted((k, repr(v)) for k, v in changes.items()))
        if key not in self.cache:
            self.cache[key] = self.fresh(**changes)
        return self.cache[key]

    def fresh(self, run_dir: Path | None = None, **changes) -> Run:
        if run_dir is None:
            run_dir = self.root / f"run{len(list(self.root.iterdir()))}"
        cfg = Config(**{**BASE, "run_dir": str(run_dir), **changes})
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                state = tdppo.train(cfg)
            threads = torch.get_num_threads()
        finally:
            torch.set_num_threads(1)
        return Run(state.select(*EXACT).clone(), Path(run_dir), out.getvalue(), threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runner(tmp_path_factory.mktemp("fields"))


def state_diff(a, b) -> list[str]:
    """The exact-state leaves that differ (missing, other shape/dtype/device, other bits)."""
    out = []
    for top in EXACT:
        la, lb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        ka, kb = set(la.keys()), set(lb.keys())
        out += [f"{top}/{k} (only in one)" for k in ka ^ kb]
        for k in ka & kb:
            x, y = la[k], lb[k]
            same = x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
            if not (same and torch.equal(x, y)):
                out.append(f"{top}/{k}")
    return out


# ----------------------------------------------------------------------------- witnesses


def changes_state(value):
    """Changing the field to ``value`` changes the final state."""

    def check(field, runs):
        diff = state_diff(runs().state, runs(**{field: value}).state)
        assert diff, f"{field}={value!r} left every leaf of the final state unchanged"

    return check


def anneal_frames(field, runs):
    # The lr of update u is lr * (1 - frames_before_u / anneal_frames): the second update of
    # a two-update run runs at half the lr.
    plain, annealed = runs(**TWO), runs(**TWO, anneal_frames=2 * BATCH)
    lrs = lambda run: [float(r["lr"]) for r in run.metrics]  # noqa: E731
    assert lrs(plain) == pytest.approx([3e-4, 3e-4])
    assert lrs(annealed) == pytest.approx([3e-4, 1.5e-4])
    assert state_diff(plain.state, annealed.state)


def clip_vloss(field, runs):
    # Value clipping bites only when the value moved further than clip_eps from the rollout's.
    on, off = runs(clip_eps=1e-4), runs(clip_eps=1e-4, clip_vloss=False)
    diff = state_diff(on.state, off.state)
    assert any(k.startswith("value/") for k in diff), diff


def checkpoint_every(field, runs):
    assert runs(**TWO).checkpoints == ["000000000032", "LATEST"]
    every = runs(**TWO, checkpoint_every=BATCH)
    assert every.checkpoints == ["000000000016", "000000000032", "LATEST"]


def keep(field, runs):
    kept = runs(**TWO, checkpoint_every=BATCH, keep=1)
    assert kept.checkpoints == ["000000000032", "LATEST"]
    assert runs(**TWO, checkpoint_every=BATCH).checkpoints[:2] == ["000000000016", "000000000032"]


def log_every(field, runs):
    assert [r["updates"] for r in runs(**TWO).metrics] == ["1", "2"]
    assert [r["updates"] for r in runs(**TWO, log_every=2).metrics] == ["2"]


def frames(field, runs):
    assert int(runs().state["counters", "frames"]) == BATCH
    assert int(runs(**TWO).state["counters", "frames"]) == 2 * BATCH


def resume(field, runs):
    # resume=False refuses a run dir that holds checkpoints; resume=True continues it, and
    # ends bit-identical to the uninterrupted two-update run.
    d = runs.root / "resumed"
    runs.fresh(run_dir=d)
    with pytest.raises(ValueError, match="resume"):
        runs.fresh(run_dir=d, **TWO)
    cont = runs.fresh(run_dir=d, resume=True, **TWO)
    assert state_diff(cont.state, runs(**TWO).state) == []
    assert cont.metrics == runs(**TWO).metrics


def run_dir(field, runs, monkeypatch):
    # None: a fresh directory under ./runs; a path: exactly there.
    monkeypatch.chdir(runs.root)
    cfg = Config(**BASE)
    assert cfg.run_dir is None
    with contextlib.redirect_stderr(io.StringIO()):
        tdppo.train(cfg)
    made = list((runs.root / "runs").iterdir())
    assert len(made) == 1 and (made[0] / "checkpoints" / "LATEST").exists()
    assert (runs().run_dir / "checkpoints" / "LATEST").exists()


def device(field, runs):
    if torch.cuda.is_available():
        state = runs(device="cuda").state
        assert state["policy"].flatten_keys("/").values()[0].device.type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA"):
            runs.fresh(device="cuda")


def threads(field, runs):
    assert runs().threads_after == 1
    assert runs(threads=2).threads_after == 2


def compile_(field, runs, monkeypatch):
    # compile=True hands the collection step and the update to tdppo.jit.compiled; compile=False
    # does not. Inductor's code generation costs 15-60 s here, so the spy compiles them with
    # dynamo's "eager" backend: really captured (the driver checks that), not code-generated.
    real, calls = jit.compiled, []

    def recording_compiled(fn, **kwargs):
        calls.append(getattr(fn, "__name__", repr(fn)))
        return real(fn, **{**kwargs, "backend": "eager", "mode": None})

    monkeypatch.setattr(jit, "compiled", recording_compiled)
    runs.fresh()
    assert calls == []
    try:
        runs.fresh(compile=True)
    finally:
        torch._dynamo.reset()  # leave no graphs or guards to the tests that follow
    assert len(calls) >= 2, calls  # at least the collection step and the minibatch update


def cudagraphs(field, runs):
    # Only meaningful on CUDA with compile: anything else is refused, naming the flag.
    with pytest.raises(ValueError, match="cudagraphs"):
        runs.fresh(cudagraphs=True)


def quiet(field, runs):
    assert runs().out == ""
    loud = runs(quiet=False).out
    assert "Pendulum-v1" in loud or "tdppo" in loud, loud


def tensorboard(field, runs):
    assert not (runs().run_dir / "tb").exists()
    try:
        run = runs.fresh(tensorboard=True)
    except ImportError as e:  # the `tensorboard` extra is not installed: the flag was read
        assert "tensorboard" in str(e).lower()
    else:
        assert any((run.run_dir / "tb").rglob("*")), "no TensorBoard files written"


def eval_episodes(field, runs):
    assert "eval" not in runs(quiet=False).out
    assert "eval" in runs(quiet=False, eval_episodes=1).out


WITNESS = {
    "env": changes_state("CartPole-v1"),
    "backend": changes_state("gym"),
    "num_envs": changes_state(4),
    "shards": changes_state(2),  # per-shard normalizer moments and shuffles, one process
    "normalize_obs": changes_state(False),
    "normalize_reward": changes_state(False),
    "obs_clip": changes_state(0.05),
    "reward_clip": changes_state(0.01),
    "frames": frames,
    "seed": changes_state(1),
    "device": device,
    "threads": threads,
    "run_dir": run_dir,
    "checkpoint_every": checkpoint_every,
    "keep": keep,
    "resume": resume,
    "compile": compile_,
    "cudagraphs": cudagraphs,
    "log_every": log_every,
    "quiet": quiet,
    "tensorboard": tensorboard,
    "num_steps": changes_state(16),
    "epochs": changes_state(2),
    "minibatches": changes_state(1),
    "lr": changes_state(1e-2),
    "anneal_frames": anneal_frames,
    "adam_eps": changes_state(1.0),
    "gamma": changes_state(0.5),
    "gae_lambda": changes_state(0.5),
    "clip_eps": changes_state(1e-4),
    "clip_vloss": clip_vloss,
    "norm_adv": changes_state(False),
    "ent_coef": changes_state(0.5),
    "vf_coef": changes_state(5.0),
    "max_grad_norm": changes_state(1e-3),
    "hidden": changes_state((8,)),
    "activation": changes_state("relu"),
    "init_log_std": changes_state(-1.0),
    "eval_episodes": eval_episodes,
}


def test_base_run_is_deterministic(runs):
    """The witnesses mean something only if two identical runs agree exactly."""
    a, b = runs(), runs.fresh()
    assert state_diff(a.state, b.state) == []
    assert a.metrics == b.metrics and a.checkpoints == b.checkpoints


@pytest.mark.parametrize("field", sorted(f.name for f in dataclasses.fields(Config)))
def test_field_changes_the_run(field, runs, monkeypatch):
    assert field in WITNESS, f"Config.{field} has no witness in tests/test_config.py"
    check = WITNESS[field]
    params = check.__code__.co_varnames[: check.__code__.co_argcount]
    check(field, runs, **({"monkeypatch": monkeypatch} if "monkeypatch" in params else {}))


# ----------------------------------------------------------------------------- validate()


FLOAT_FIELDS = [
    f.name for f in dataclasses.fields(Config) if isinstance(getattr(Config(), f.name), float)
]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_refused_in_one_line(field, bad):
    with pytest.raises(ValueError) as e:
        Config(**{field: bad}).validate()
    msg = str(e.value)
    assert field in msg and "finite" in msg and "\n" not in msg


def test_float_fields_are_all_checked():
    names = {"lr", "gamma", "gae_lambda", "adam_eps", "clip_eps", "obs_clip", "reward_clip",
             "ent_coef", "vf_coef", "max_grad_norm", "init_log_std"}  # fmt: skip
    assert names <= set(FLOAT_FIELDS)


def test_existing_checks_still_hold():
    Config().validate()
    for bad, word in [
        (dict(num_envs=0), "num_envs"),
        (dict(num_envs=3, num_steps=5, minibatches=4), "divisible"),
        (dict(num_envs=2, num_steps=16, minibatches=32), "advantage normalization needs >= 2"),
        (dict(gamma=0.0), "gamma"),
        (dict(gae_lambda=1.5), "gae_lambda"),
        (dict(lr=0.0), "lr"),
        (dict(keep=0), "keep"),
        (dict(hidden=()), "hidden"),
    ]:
        with pytest.raises(ValueError, match=word):
            Config(**bad).validate()
    Config(num_envs=2, num_steps=16, minibatches=32, norm_adv=False).validate()
