"""Devices: the CUDA code paths a CPU can reach, then the real CUDA checks.

The first part runs everywhere (``make test``, CI): every leaf of a single-agent and of a
population state lives on the device asked for; a checkpoint written by a CUDA run (its
``meta.json`` files record ``cuda:0``) evaluates and resumes on a CPU-only machine, bit for bit
as the uninterrupted run; CUDA graphs (``torch.compile(mode="reduce-overhead")``) are refused
off CUDA with one line and exit status 2, and never requested there. The second part is marked
``gpu`` and skipped where CUDA is absent; ``benchmarks/device_check.sh`` runs it on the GPU
machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import tdppo
from tdppo import Config, jit
from tdppo.checkpoint import load_checkpoint
from tdppo.cli import main

CUDA = torch.cuda.is_available()

# Tiny and eager: 2 updates of 8 envs x 16 steps.
TINY = dict(
    num_envs=8, num_steps=16, epochs=1, minibatches=2, quiet=True, eval_episodes=0,
    checkpoint_every=0, compile=False,
)  # fmt: skip


def cfg(env: str = "CartPole-v1", **kw) -> Config:
    return Config.for_env(env, **{**TINY, **kw})


def leaves(td) -> dict[str, torch.Tensor]:
    return {"/".join(k): v for k, v in td.items(include_nested=True, leaves_only=True)}


def assert_bit_equal(a, b, skip: tuple[str, ...] = ("meta",)) -> None:
    la = {k: v for k, v in leaves(a).items() if k.split("/")[0] not in skip}
    lb = {k: v for k, v in leaves(b).items() if k.split("/")[0] not in skip}
    assert la.keys() == lb.keys()
    for k in la:
        x, y = la[k].cpu(), lb[k].cpu()
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), k


def as_if_saved_on_cuda(ckpt: Path) -> None:
    """Make a CPU-written checkpoint what a CUDA run writes: tensordict's ``meta.json`` files
    name ``cuda:0``; the manifest's sizes and sha256 are recomputed (independently, hashlib)."""
    metas = list(ckpt.rglob("meta.json"))
    assert metas
    for meta in metas:
        d = json.loads(meta.read_text())
        assert d.get("device") in ("cpu", None), meta
        d["device"] = "cuda:0"
        meta.write_text(json.dumps(d))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = {}
    for p in sorted(ckpt.rglob("*")):
        rel = p.relative_to(ckpt).as_posix()
        if p.is_file() and rel != "manifest.json":
            files[rel] = {
                "size": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
    assert files.keys() == manifest["files"].keys()
    manifest["files"] = files
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()


# -- CPU-reachable -----------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [None, [0, 1]], ids=["single", "population"])
def test_every_state_leaf_lives_on_the_device_asked_for(tmp_path, seeds):
    env = "Pendulum-v1" if seeds else "CartPole-v1"
    state = tdppo.train(cfg(env, frames=256, device="cpu", run_dir=str(tmp_path)), seeds=seeds)
    found = leaves(state)
    assert len(found) > 20
    off = {k: str(v.device) for k, v in found.items() if v.device != torch.device("cpu")}
    assert off == {}
    if seeds:
        assert found["policy/" + next(iter(leaves(state["policy"])))].shape[0] == 2


def test_checkpoint_written_on_cuda_evaluates_and_resumes_on_cpu(tmp_path):
    """A CUDA run's checkpoint, on a CPU-only machine: `tdppo eval` gives the same returns as
    the CPU-written one, and resuming it gives the uninterrupted run bit for bit."""
    full = tdppo.train(cfg(frames=512, device="cpu", run_dir=str(tmp_path / "full")))
    half = tmp_path / "half"
    tdppo.train(cfg(frames=256, device="cpu", run_dir=str(half)))
    plain = tdppo.evaluate(half, episodes=2, seed=3)
    as_if_saved_on_cuda(latest(half))
    assert "cuda:0" in (latest(half) / "policy" / "meta.json").read_text()
    loaded = load_checkpoint(half)
    assert {v.device.type for v in leaves(loaded).values()} == {"cpu"}
    assert tdppo.evaluate(half, episodes=2, seed=3)["mean_return"] == plain["mean_return"]
    resumed = tdppo.train(cfg(frames=512, device="cpu", run_dir=str(half), resume=True))
    assert {v.device.type for v in leaves(resumed).values()} == {"cpu"}
    assert_bit_equal(full, resumed)


def _train_cli(tmp_path, *args: str) -> list[str]:
    argv = ["train", "--env", "Pendulum-v1", "--num-envs", "8", "--num-steps", "16"]
    argv += ["--frames", "128", "--quiet", "--eval-episodes", "0", "--run-dir", str(tmp_path)]
    return argv + list(args)


@pytest.mark.parametrize(
    "extra",
    [
        ["--device", "cpu", "--cudagraphs"],
        ["--device", "cpu", "--cudagraphs", "--no-compile"],
        ["--device", "cpu", "--cudagraphs", "--seeds", "0-1"],
    ],
    ids=["cpu", "cpu-no-compile", "cpu-population"],
)
def test_cudagraphs_off_cuda_is_refused_with_one_line(tmp_path, capsys, extra):
    assert main(_train_cli(tmp_path / "run", *extra)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "cudagraphs" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_asked_for_without_cuda_is_refused_with_one_line(tmp_path, capsys, device):
    assert main(_train_cli(tmp_path / "run", "--device", device)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "CUDA" in err, err


@pytest.mark.compile
def test_reduce_overhead_is_never_requested_off_cuda(tmp_path, monkeypatch):
    """With --compile on CPU the compiler is used, but never in CUDA-graph mode.
    ``tdppo.jit.compiled`` is wrapped to record its arguments (and to use dynamo's cheap eager
    backend)."""
    calls = []
    real = jit.compiled

    def recording(fn, **kw):
        calls.append(kw.get("mode"))
        return real(fn, **{**kw, "backend": "eager", "mode": None})

    monkeypatch.setattr(jit, "compiled", recording)
    tdppo.train(cfg("Pendulum-v1", frames=256, device="cpu", compile=True, run_dir=str(tmp_path)))
    assert calls and "reduce-overhead" not in calls, calls


# -- CUDA (gpu marker; run by benchmarks/device_check.sh) ------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("seeds", [None, [0, 1]], ids=["single", "population"])
def test_cuda_state_lives_on_cuda_and_loads_on_cpu_and_back(tmp_path, seeds):
    env = "Pendulum-v1" if seeds else "CartPole-v1"
    s = tdppo.train(cfg(env, frames=256, device="cuda", run_dir=str(tmp_path)), seeds=seeds)
    off = {k: str(v.device) for k, v in leaves(s).items() if v.device.type != "cuda"}
    assert off == {}
    cpu = load_checkpoint(tmp_path, device="cpu")
    assert {v.device.type for v in leaves(cpu).values()} == {"cpu"}
    assert_bit_equal(s, cpu)
    back = load_checkpoint(tmp_path, device="cuda")
    assert {v.device.type for v in leaves(back).values()} == {"cuda"}
    assert_bit_equal(s, back)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_checkpoint_resumes_on_cpu_and_back_on_cuda(tmp_path):
    run = str(tmp_path)
    tdppo.train(cfg(frames=256, device="cuda", run_dir=run))
    s = tdppo.train(cfg(frames=512, device="cpu", run_dir=run, resume=True))
    assert {v.device.type for v in leaves(s).values()} == {"cpu"}
    s = tdppo.train(cfg(frames=768, device="cuda", run_dir=run, resume=True))
    assert {v.device.type for v in leaves(s).values()} == {"cuda"}
    assert int(s["counters", "frames"]) == 768


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_resume_is_exact(tmp_path):
    a = tdppo.train(cfg(frames=512, device="cuda", run_dir=str(tmp_path / "a")))
    tdppo.train(cfg(frames=256, device="cuda", run_dir=str(tmp_path / "b")))
    b = tdppo.train(cfg(frames=512, device="cuda", run_dir=str(tmp_path / "b"), resume=True))
    assert_bit_equal(a, b)


@pytest.mark.gpu
@pytest.mark.compile
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cudagraphs_update_runs_and_matches_plain_compile(tmp_path):
    kw = dict(frames=512, device="cuda", compile=True)
    g = tdppo.train(cfg("Pendulum-v1", cudagraphs=True, run_dir=str(tmp_path / "g"), **kw))
    p = tdppo.train(cfg("Pendulum-v1", run_dir=str(tmp_path / "p"), **kw))
    assert int(g["counters", "frames"]) == 512
    for k, v in leaves(p["policy"]).items():
        torch.testing.assert_close(leaves(g["policy"])[k], v, rtol=1e-4, atol=1e-5, msg=k)
