"""The CLI end to end, in subprocesses: train, resume, kill -9, eval, inspect, refusals."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdppo import checkpoint as ckpt
from tdppo.state import EXACT_KEYS

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SMALL = [
    "--env", "CartPole-v1", "--num-envs", "4", "--num-steps", "32", "--epochs", "2",
    "--minibatches", "4", "--no-compile", "--quiet", "--eval-episodes", "0", "--threads", "1",
]  # fmt: skip


def tdppo(*args, check=True):
    p = subprocess.run(
        [sys.executable, "-m", "tdppo", *map(str, args)], capture_output=True, text=True, env=ENV
    )
    if check and p.returncode != 0:
        raise AssertionError(f"tdppo {args} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p


def crash_run(mode, n, *args):
    return subprocess.run(
        [sys.executable, str(HERE / "_crash_runner.py"), mode, str(n), "--", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
    )


def same_state(a, b):
    for top in EXACT_KEYS:
        la, lb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        assert set(la.keys()) == set(lb.keys()), top
        for k in la.keys():
            assert torch.equal(la[k], lb[k]), f"{top}/{k} differs"


@pytest.mark.slow
def test_kill9_at_random_moments_resumes_bit_exact(tmp_path):
    from tdppo import Config, train

    total = 10 * 128
    ref = tmp_path / "ref"  # the uninterrupted run, in process (same code path as the CLI)
    train(
        Config.for_env(
            "CartPole-v1", frames=total, run_dir=str(ref), checkpoint_every=256, num_envs=4,
            num_steps=32, epochs=2, minibatches=4, compile=False, quiet=True, eval_episodes=0,
            threads=1,
        )
    )  # fmt: skip
    run = tmp_path / "run"
    rng = random.Random(1234)  # fixed seed: the same kill points every time
    kills = 0
    first = True
    for _ in range(6):
        mode = rng.choice(["frames", "fsync"])
        n = rng.randrange(256, total, 128) if mode == "frames" else rng.randrange(2, 60)
        args = ["train", *SMALL, "--frames", total, "--run-dir", run, "--checkpoint-every", 256]
        if not first:
            args.append("--resume")
        p = crash_run(mode, n, *args)
        if p.returncode == 0:
            break
        assert p.returncode == -9, p.stderr[-2000:]
        kills += 1
        if (run / "checkpoints" / "LATEST").exists():
            first = False
            # LATEST never names an incomplete checkpoint
            latest = (run / "checkpoints" / "LATEST").read_text().strip()
            ckpt.verify(run / "checkpoints" / latest)
    else:
        p = crash_run("none", 0, *args)
        assert p.returncode == 0, p.stderr[-2000:]
    assert kills >= 2, "the test must actually kill the run"
    same_state(ckpt.load_checkpoint(ref), ckpt.load_checkpoint(run))


def test_eval_and_inspect(tmp_path):
    tdppo("train", *SMALL, "--frames", 256, "--run-dir", tmp_path)
    p = tdppo("eval", tmp_path, "--episodes", 3, "--seed", 1)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["episodes"] == 3 and isinstance(res["mean_return"], float)
    before = ckpt.load_checkpoint(tmp_path)
    p = tdppo("inspect", tmp_path)
    assert "transforms" in p.stdout and "256" in p.stdout
    # eval never writes statistics: the checkpoint is unchanged
    same_state(before, ckpt.load_checkpoint(tmp_path))


def test_bad_env_id_is_one_clear_line(tmp_path):
    p = tdppo("train", "--env", "NoSuchEnv-v9", "--run-dir", tmp_path, check=False)
    assert p.returncode == 2
    assert "NoSuchEnv-v9" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_missing_transforms_refused_naming_it(tmp_path):
    tdppo("train", *SMALL, "--frames", 256, "--run-dir", tmp_path / "a")
    state = ckpt.load_checkpoint(tmp_path / "a")
    cfg = json.loads(bytes(state["meta", "config_json"].tolist()))
    cfg["run_dir"] = str(tmp_path / "b")
    ckpt.save_checkpoint(tmp_path / "b", state.exclude("transforms"), frames=256, config=cfg)
    p = tdppo(
        "train", *SMALL, "--frames", 512, "--run-dir", tmp_path / "b", "--resume", check=False
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "transforms" in p.stderr


def test_resume_config_mismatch_lists_fields(tmp_path):
    tdppo("train", *SMALL, "--frames", 128, "--run-dir", tmp_path)
    args = [a if a != "4" else "8" for a in SMALL]  # num-envs 4 -> 8, minibatches 4 -> 8
    p = tdppo("train", *args, "--frames", 256, "--run-dir", tmp_path, "--resume", check=False)
    assert p.returncode == 2 and "num_envs" in p.stderr and "Traceback" not in p.stderr


def test_damaged_latest_falls_back_and_says_so(tmp_path):
    tdppo("train", *SMALL, "--frames", 512, "--run-dir", tmp_path, "--checkpoint-every", 128)
    latest = (tmp_path / "checkpoints" / "LATEST").read_text().strip()
    victim = max(
        (tmp_path / "checkpoints" / latest).rglob("*.memmap"), key=lambda f: f.stat().st_size
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    p = tdppo("train", *SMALL, "--frames", 640, "--run-dir", tmp_path, "--resume")
    assert latest in p.stderr and "skip" in p.stderr.lower()
    assert "skipp" in (tmp_path / "metrics.csv").read_text()


def test_population_cli_and_member_eval(tmp_path):
    tdppo("train", *SMALL, "--frames", 128, "--run-dir", tmp_path, "--seeds", "0-1",
          "--sweep", "lr=1e-4,3e-4")  # fmt: skip
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("member") or "member" in rows[0].split(",")
    assert len(rows) - 1 == 4  # 2 seeds x 2 lrs, one logged update each
    p = tdppo("eval", tmp_path, "--episodes", 2, "--member", 3)
    assert json.loads(p.stdout.strip().splitlines()[-1])["episodes"] == 2
    p = tdppo("eval", tmp_path, "--episodes", 2, check=False)
    assert p.returncode == 2 and "--member" in p.stderr
    p = tdppo("train", *SMALL, "--run-dir", tmp_path / "x", "--sweep", "hidden=1,2", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
