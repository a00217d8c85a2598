"""The one driver (tdppo.trainer.train): every feature, for a single agent and a population of 2.

References: the uninterrupted run (resume, preemption), the checkpoint cadence as arithmetic
over the config, and the state before the failing update (the non-finite guard).
"""

from __future__ import annotations

import csv
import os
import signal

import pytest
import torch

from tdppo import Config, jit, train
from tdppo.checkpoint import list_checkpoints, load_checkpoint
from tdppo.jit import captured
from tdppo.signals import Preempted
from tdppo.state import EXACT_KEYS

SMALL = dict(
    num_envs=4, num_steps=16, epochs=1, minibatches=2, quiet=True, eval_episodes=0,
    compile=False, threads=1,
)  # fmt: skip
PER_UPDATE = 4 * 16
KINDS = {"single": None, "population": [3, 4]}


def _train(kind: str, run_dir, updates: int, env: str = "CartPole-v1", **kw):
    cfg = Config.for_env(env, frames=updates * PER_UPDATE, run_dir=str(run_dir), **{**SMALL, **kw})
    return train(cfg, seeds=KINDS[kind])


def _same(a, b) -> None:
    for top in EXACT_KEYS:
        la, lb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        assert set(la.keys()) == set(lb.keys()), top
        for k in la.keys():
            assert torch.equal(la[k], lb[k]), f"{top}/{k} differs"


@pytest.fixture(params=list(KINDS))
def kind(request) -> str:
    return request.param


def test_resume_is_the_uninterrupted_run(kind, tmp_path):
    straight = _train(kind, tmp_path / "a", 4, checkpoint_every=0)
    _train(kind, tmp_path / "b", 2, checkpoint_every=0)
    resumed = _train(kind, tmp_path / "b", 4, resume=True)
    _same(straight, resumed)
    _same(resumed, load_checkpoint(tmp_path / "b"))
    lead = () if kind == "single" else (2,)
    assert resumed["counters", "frames"].shape == lead
    assert resumed["hp", "lr"].shape == lead and resumed["hp", "lr"].dtype == torch.float64


def test_checkpoint_cadence(kind, tmp_path):
    _train(kind, tmp_path, 5, checkpoint_every=2 * PER_UPDATE, keep=10)
    names = [int(p.name) for p in list_checkpoints(tmp_path)]
    assert sorted(names) == [2 * PER_UPDATE, 4 * PER_UPDATE, 5 * PER_UPDATE]
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * (1 if kind == "single" else 2)


def test_nonfinite_guard_stops_before_any_save(kind, tmp_path, monkeypatch):
    """Observations turn NaN from the second update on: the first update's checkpoint is the
    last one, and it holds finite statistics."""
    import tdppo.trainer as trainer
    from tdppo.envs import DYNAMICS

    dyn, make, broken_from = DYNAMICS["CartPole-v1"], trainer.make_train_step, []
    real = type(dyn).observe

    def observe(self, state):
        obs = real(self, state)
        return torch.full_like(obs, torch.nan) if broken_from else obs

    def make_breaking(*args, **kwargs):
        step = make(*args, **kwargs)

        def step_then_break(state):
            out = step(state)
            broken_from.append(True)  # every step after the first sees NaN observations
            return out

        step_then_break.compiled_parts = step.compiled_parts
        return step_then_break

    monkeypatch.setattr(type(dyn), "observe", observe)
    monkeypatch.setattr(trainer, "make_train_step", make_breaking)
    with pytest.raises(ValueError, match="non-finite observation or reward"):
        _train(kind, tmp_path, 4, checkpoint_every=PER_UPDATE)
    assert [int(p.name) for p in list_checkpoints(tmp_path)] == [PER_UPDATE]
    saved = load_checkpoint(tmp_path)["transforms"].flatten_keys("/")
    assert all(bool(torch.isfinite(v).all()) for v in saved.values() if v.is_floating_point())


def test_progress_and_final_eval_are_said(kind, tmp_path, capfd):
    _train(kind, tmp_path, 2, quiet=False, eval_episodes=2)
    err = capfd.readouterr().err
    assert "tdppo: training" in err and "checkpoint" in err
    evals = [line for line in err.splitlines() if "eval mean return over 2 episodes" in line]
    assert len(evals) == (1 if kind == "single" else 2)


def test_sigterm_saves_and_resumes_exactly(kind, tmp_path, monkeypatch):
    """SIGTERM during the second update: the driver finishes it, saves, raises Preempted."""
    import tdppo.trainer as trainer

    make = trainer.make_train_step
    calls = []

    def make_with_signal(*args, **kwargs):
        step = make(*args, **kwargs)

        def step_then_signal(state):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(state)

        step_then_signal.compiled_parts = step.compiled_parts
        return step_then_signal

    monkeypatch.setattr(trainer, "make_train_step", make_with_signal)
    with pytest.raises(Preempted) as e:
        _train(kind, tmp_path / "b", 4, checkpoint_every=0)
    assert e.value.exit_status == 143 and e.value.frames == 2 * PER_UPDATE
    assert [int(p.name) for p in list_checkpoints(tmp_path / "b")] == [2 * PER_UPDATE]
    monkeypatch.setattr(trainer, "make_train_step", make)
    resumed = _train(kind, tmp_path / "b", 4, resume=True)
    _same(_train(kind, tmp_path / "a", 4), resumed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cudagraphs_needs_cuda(kind, tmp_path):
    with pytest.raises(ValueError, match="--cudagraphs needs a CUDA device"):
        _train(kind, tmp_path, 1, compile=True, cudagraphs=True, device="cpu")
    assert not tmp_path.exists() or not list_checkpoints(tmp_path)


@pytest.mark.compile
# the compiled tests of this file, test_resume.py and test_population.py share one small config,
# so one worker runs them in turn: the first compiles its packages, the rest load them
@pytest.mark.xdist_group("tiny-compiled")
def test_compiled_parts_capture_graphs(kind, tmp_path, monkeypatch):
    import tdppo.trainer as trainer

    make, steps = trainer.make_train_step, []

    def keep(*args, **kwargs):
        steps.append(make(*args, **kwargs))
        return steps[-1]

    monkeypatch.setattr(trainer, "make_train_step", keep)
    ahead, real_ahead = [], jit.compile_ahead

    def spy_ahead(fn, *args):
        ahead.append((fn, args))
        return real_ahead(fn, *args)

    monkeypatch.setattr(jit, "compile_ahead", spy_ahead)
    _train(kind, tmp_path, 2, env="Pendulum-v1", compile=True, hidden=(8,), num_steps=4)
    parts = steps[0].compiled_parts
    assert set(parts) == {"env_step", "minibatch_step"}
    assert all(captured(fn) for fn in parts.values())
    assert all(len(fn._variants) == 1 for fn in parts.values())  # one layout each
    # the first iteration armed a dry run of the step (it runs when a package is missing);
    # on fake tensors the step meets both compiled parts, so a cold cache compiles them at once
    ((fn, args),) = ahead
    assert fn is steps[0]
    assert {id(aot) for aot, _ in jit._dry_run(fn, args)} == {id(f) for f in parts.values()}


@pytest.mark.compile
@pytest.mark.xdist_group("tiny-compiled")
def test_skipping_guards_after_the_first_iteration_changes_nothing(kind, tmp_path, monkeypatch):
    """From its second iteration the driver skips dynamo's guard checks
    (``jit.guards_checked``); the run equals one that checks every guard, bit for bit."""
    import contextlib

    from tdppo import jit

    real, asked = jit.guards_checked, []

    def spy(checked: bool):
        asked.append(checked)
        return real(checked)

    kw = dict(env="Pendulum-v1", compile=True, hidden=(8,), num_steps=4, checkpoint_every=0)
    monkeypatch.setattr(jit, "guards_checked", spy)
    skipped = _train(kind, tmp_path / "a", 3, **kw)
    assert asked[0] and len(asked) > 1 and not any(asked[1:])
    monkeypatch.setattr(jit, "guards_checked", lambda checked: contextlib.nullcontext())
    _same(skipped, _train(kind, tmp_path / "b", 3, **kw))


def test_tensorboard_logs_every_metric(kind, tmp_path):
    """TensorBoard's own reader (tensorboard's EventAccumulator) finds the metrics.csv values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(kind, tmp_path, 2, tensorboard=True)
    events = [p for p in (tmp_path / "tb").rglob("events.out.tfevents.*")]
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    prefixes = [""] if kind == "single" else ["member0/", "member1/"]
    for p in prefixes:
        assert {f"{p}loss_policy", f"{p}sps", f"{p}lr"} <= tags, tags
    with open(tmp_path / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    got = acc.Scalars(f"{prefixes[-1]}loss_value")[-1]
    assert got.step == int(last["frames"])
    assert got.value == pytest.approx(float(last["loss_value"]), rel=1e-6)
