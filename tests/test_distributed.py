"""Data-parallel training on torch.distributed (gloo, 2 CPU processes through torchrun).

References: numpy float64 over the concatenated batch (the shard merge), one process running
the same shards (the mathematics depends on --shards, not on the process count), and the
uninterrupted run (resume, a killed rank).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tdppo import stats
from tdppo.checkpoint import list_checkpoints, load_checkpoint
from tdppo.distributed import Shards, shard_moments
from tdppo.state import EXACT_KEYS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ARGS = [
    "--env", "CartPole-v1", "--num-envs", "4", "--shards", "2", "--num-steps", "32",
    "--epochs", "2", "--minibatches", "2", "--no-compile", "--quiet", "--eval-episodes", "0",
    "--threads", "1",
]  # fmt: skip
PER_UPDATE = 4 * 32


def tdppo(*args, procs: int = 1, restarts: int = 0, popen: bool = False):
    if procs == 1:
        cmd = [sys.executable, "-m", "tdppo", "train", *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", f"--max-restarts={restarts}",
               "-m", "tdppo", "train", *map(str, args)]  # fmt: skip
    if popen:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}:\n{p.stderr[-3000:]}"
    return p


def leaves(state, top):
    return state[top].flatten_keys("/")


def assert_same(a, b, float_tol=None):
    for top in EXACT_KEYS:
        la, lb = leaves(a, top), leaves(b, top)
        assert set(la.keys()) == set(lb.keys()), top
        for k in la.keys():
            x, y = la[k], lb[k]
            assert x.shape == y.shape and x.dtype == y.dtype, f"{top}/{k}"
            if float_tol is not None and top in float_tol and x.is_floating_point():
                torch.testing.assert_close(x, y, atol=float_tol[top], rtol=0, msg=f"{top}/{k}")
            else:
                assert torch.equal(x, y), f"{top}/{k} differs"


def test_shard_merge_equals_the_concatenated_batch():
    """Four shards' moments, merged in shard order, are numpy's float64 moments of the whole
    batch (offset 1e3, so a one-pass formula would show), masked rows included."""
    g = torch.Generator().manual_seed(0)
    x = 1e3 + torch.randn(16, 3, generator=g, dtype=torch.float64) * 5
    mask = torch.rand(16, generator=g) > 0.3
    moments = shard_moments(Shards(count=4))
    for m in (None, mask):
        mean, var, count, finite = moments(x, 1, m, torch.tensor(True))
        ref = x.numpy() if m is None else x.numpy()[m.numpy()]
        assert float(count) == len(ref) and bool(finite)
        np.testing.assert_allclose(mean.numpy(), ref.mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(var.numpy(), ref.var(0), rtol=1e-12, atol=0)
    whole = stats._batch_moments(x, 1, None)
    torch.testing.assert_close(moments(x, 1, None, torch.tensor(True))[0], whole[0], rtol=0,
                               atol=1e-12)  # fmt: skip


@pytest.mark.slow
def test_two_processes_are_one_process_with_the_same_shards(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    tdppo(*ARGS, "--frames", 4 * PER_UPDATE, "--run-dir", one)
    tdppo(*ARGS, "--frames", 4 * PER_UPDATE, "--run-dir", two, procs=2)
    a, b = load_checkpoint(one), load_checkpoint(two)
    # discrete actions: the env, keys and counters are identical; statistics to 1e-12;
    # parameters and Adam moments to float32 rounding of the gradient all-reduce
    assert_same(a, b, float_tol={"transforms": 1e-12, "policy": 1e-5, "value": 1e-5,
                                 "optimizer": 1e-5})  # fmt: skip
    # every frame counted once, every reset observation once: not once per process
    count = float(leaves(b, "transforms")["transforms/1/count"])
    resets = float(b["counters", "episodes"]) + 4
    assert count == pytest.approx(4 * PER_UPDATE + resets, abs=1e-3)


@pytest.mark.slow
def test_resume_at_two_processes_is_bit_exact_and_two_to_one_continues(tmp_path):
    straight, resumed, narrowed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    tdppo(*ARGS, "--frames", 4 * PER_UPDATE, "--run-dir", straight, procs=2)
    tdppo(*ARGS, "--frames", 2 * PER_UPDATE, "--run-dir", resumed, procs=2)
    half = list_checkpoints(resumed)[-1]
    (narrowed / "checkpoints").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(half), str(narrowed / "checkpoints")], check=True)
    (narrowed / "checkpoints" / "LATEST").write_text(half.name + "\n")
    tdppo("--resume", "--run-dir", resumed, "--frames", 4 * PER_UPDATE, procs=2)
    assert_same(load_checkpoint(straight), load_checkpoint(resumed))
    # the same shards on one process: continues, counts not inflated
    tdppo("--resume", "--run-dir", narrowed, "--frames", 4 * PER_UPDATE)
    assert_same(load_checkpoint(straight), load_checkpoint(narrowed),
                float_tol={"transforms": 1e-12, "policy": 1e-5, "value": 1e-5,
                           "optimizer": 1e-5})  # fmt: skip


def _workers(run_dir) -> list[int]:
    """torchrun's worker processes of the run in ``run_dir`` (run as ``python -u -m tdppo``)."""
    pattern = f"python -u -m tdppo train .*{run_dir}"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


@pytest.mark.slow
def test_a_killed_rank_restarts_and_ends_as_the_uninterrupted_run(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    more = ["--frames", 8 * PER_UPDATE, "--checkpoint-every", 2 * PER_UPDATE, "--keep", "10"]
    tdppo(*ARGS, *more, "--run-dir", ref, procs=2)
    proc = tdppo(*ARGS, *more, "--run-dir", run, procs=2, restarts=1, popen=True)
    deadline = time.monotonic() + 240
    while not list_checkpoints(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = _workers(run)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun restarts both
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert_same(load_checkpoint(ref), load_checkpoint(run))
