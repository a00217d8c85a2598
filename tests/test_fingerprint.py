"""``tdppo.fingerprint``: a function's code and everything it closes over, hashed without running
it (what keys a compiled graph before tracing). Each case changes one thing a traced graph would
see (a closure value, a tensor's bytes, a function it calls, a method of a class it uses) and
checks the fingerprint changes with it; objects it cannot read by value give ``None``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import torch

import tdppo.nets as nets_module
from tdppo.fingerprint import fingerprint


def _make(scale: float, weights: torch.Tensor):
    def fn(x):
        return nets_module.value(None, {"w": weights}, x) * scale  # never called here

    return fn


class _Dyn:
    def __init__(self, g: float):
        self.g = g

    def step(self, x):
        return x * self.g


def _uses(dyn):
    def fn(x):
        return dyn.step(x)

    return fn


def test_equal_for_equal_contents_and_changed_by_each_thing_a_trace_reads(monkeypatch):
    w = torch.arange(6.0).reshape(2, 3)
    base = fingerprint(_make(2.0, w))
    assert base is not None and base == fingerprint(_make(2.0, w.clone()))  # another object
    assert fingerprint(_make(3.0, w)) != base  # a closure value
    w2 = w.clone()
    w2[1, 2] = 7.0
    assert fingerprint(_make(2.0, w2)) != base  # one element of a tensor
    assert fingerprint(_make(2.0, w.double())) != base  # a dtype
    # a module-level function the code calls, as it is now (a monkeypatch counts)
    monkeypatch.setattr(nets_module, "value", lambda critic, params, obs: obs)
    assert fingerprint(_make(2.0, w)) != base
    monkeypatch.undo()
    assert fingerprint(_make(2.0, w)) == base
    # an object's attributes and its class's methods
    d = fingerprint(_uses(_Dyn(9.8)))
    assert d == fingerprint(_uses(_Dyn(9.8))) and d != fingerprint(_uses(_Dyn(9.81)))
    monkeypatch.setattr(_Dyn, "step", lambda self, x: x + self.g)
    assert fingerprint(_uses(_Dyn(9.8))) != d


def test_what_cannot_be_read_by_value_has_no_fingerprint():
    lock = threading.Lock()

    def fn(x):
        with lock:
            return x

    assert fingerprint(fn) is None
    import numpy as np

    arr = np.zeros(3)

    def g(x):
        return x + arr.sum()

    assert fingerprint(g) is None


_PARTS = """
import json, sys, torch
torch.set_num_threads(1)
from tdppo.config import Config
from tdppo.fingerprint import fingerprint
from tdppo.learner import make_train_step
from tdppo.setup import init_state
def parts(**kw):
    cfg = Config(**{"env": "Pendulum-v1", "num_envs": 4, "num_steps": 8, **kw})
    state, parts = init_state(cfg, torch.device("cpu"))
    fns = {k: f for k, f in make_train_step(cfg, parts).compiled_parts.items() if f is not None}
    if cfg.backend == "gym":  # the gym backend's per-step pure functions
        fns.update(policy=parts.collector._policy, step=parts.collector._step)
    return {k: fingerprint(f.fn) for k, f in fns.items()}
print(json.dumps({"0": parts(seed=0), "1": parts(seed=1), "no_clip": parts(clip_vloss=False),
                  "gym": parts(env="CartPole-v1", backend="gym")}))
"""


def test_the_train_steps_compiled_parts_are_the_same_in_every_process_and_seed():
    """The env step and the minibatch step (and the gym backend's policy and step): every value
    they close over is read (their networks are structure on the meta device, so the seed is
    not among them) and the fingerprint is the same in two processes; a config field the loss
    reads changes the minibatch step's."""
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _PARTS], capture_output=True, text=True, check=True
            ).stdout
        )  # fmt: skip
        for _ in range(2)
    ]
    a, b = runs
    assert a == b
    assert None not in a["0"].values() and None not in a["gym"].values()
    assert len(a["gym"]) == 3
    assert a["0"] == a["1"]  # seeds
    assert a["no_clip"]["env_step"] == a["0"]["env_step"]
    assert a["no_clip"]["minibatch_step"] != a["0"]["minibatch_step"]
