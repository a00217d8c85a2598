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


# ----------------------------------------------------------------------------- issue 10


def one_line_refusal(p):
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr.strip()


def manifest_config(run):
    return ckpt.read_manifest(ckpt.resolve(run)[0])["config"]


def test_seed_is_one_agent_and_evaluates(tmp_path):
    # `--seed 1` was read as `--seeds 1` (argparse abbreviation): a population of one that
    # `tdppo eval R` then refused. The README's Learning table is reproduced this way.
    run = tmp_path / "r"
    tdppo("train", *SMALL, "--seed", 1, "--frames", 128, "--run-dir", run)
    state = ckpt.load_checkpoint(run)
    assert "population_json" not in state["meta"].keys()
    assert state["counters", "frames"].shape == () and manifest_config(run)["seed"] == 1
    p = tdppo("eval", run, "--episodes", 2, "--seed", 100)
    assert json.loads(p.stdout.strip().splitlines()[-1])["episodes"] == 2


@pytest.mark.parametrize(
    "args, named",
    [
        (["train", "--see", "1"], "--see"),  # not --seed
        (["train", "--seed"], "--seed"),  # missing value: not --seeds
        (["train", "--num-env", "2"], "--num-env"),  # not --num-envs
        (["train", "--envs", "CartPole-v1"], "--envs"),  # not --env
        (["train", "--seed", "1", "--seeds"], "--seeds"),  # --seeds without its value
        (["train", "--seedss", "0-1"], "--seedss"),  # not --seeds
        (["train", "--swee", "lr=1e-4"], "--swee"),  # not --sweep
        (["train", "--resum"], "--resum"),  # not --resume
        (["eval", "R", "--ep", "2"], "--ep"),  # not --episodes
        (["eval", "R", "--mem", "0"], "--mem"),  # not --member
        (["eval", "R", "--seeds", "1"], "--seeds"),  # eval has --seed only
        (["inspect", "R", "--x"], "--x"),
    ],
)
def test_abbreviations_and_near_collisions_are_refused(tmp_path, args, named, capsys):
    # In process (the same main() the console script runs): argparse and tyro refuse before
    # anything is built, naming the flag typed.
    from tdppo.cli import main

    args = [str(tmp_path / "R") if a == "R" else a for a in args]
    if args[0] == "train":
        args += ["--run-dir", str(tmp_path / "run")]
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tdppo {args[0]}: error:") and named in err, err
    assert not (tmp_path / "run").exists()  # nothing was touched


def test_abbreviation_message_names_the_flag_meant(capsys):
    from tdppo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--see", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "--see" in err and "did you mean --seed" in err


def test_tyro_itself_refuses_every_abbreviated_field_flag():
    # Config flags are parsed by tyro; a flag cut short by one letter must never parse.
    import contextlib
    import dataclasses
    import io

    import tyro

    from tdppo import Config

    flags = set()
    for f in dataclasses.fields(Config):
        flags.add("--" + f.name.replace("_", "-"))
    for flag in sorted(flags):
        short = flag[:-1]
        if short in flags or short == "--":
            continue
        with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as e:
            tyro.cli(Config, args=[short, "1"], default=Config())
        assert e.value.code == 2, short


def test_non_finite_flags_are_one_line_and_touch_nothing(tmp_path, capsys):
    msg = one_line_refusal(tdppo("train", *SMALL, "--lr", "nan", "--run-dir", tmp_path / "r",
                                 check=False))  # fmt: skip
    assert "lr" in msg and "finite" in msg
    from tdppo.cli import main

    for flag, value in [("--gamma", "inf"), ("--ent-coef", "-inf"), ("--obs-clip", "nan")]:
        assert main(["train", *SMALL, flag, value, "--run-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and flag[2:].replace("-", "_") in err
    assert not (tmp_path / "r").exists()


def test_resume_without_run_dir_is_one_line(capsys):
    from tdppo.cli import main

    assert main(["train", *SMALL, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume needs --run-dir" in err


def test_resume_takes_the_saved_config_and_ends_bit_exact(tmp_path):
    # A CartPole run with non-default flags (and --no-compile), resumed with only
    # `--resume --run-dir R --frames N` typed: the saved config is the base, so it resumes
    # (it was refused: "env: 'CartPole-v1' -> 'Pendulum-v1', ..."), stays no-compile, quiet
    # and seed 3, and ends bit-identical to the uninterrupted run.
    flags = [*SMALL, "--seed", 3, "--gamma", 0.95, "--hidden", 32, 32, "--no-normalize-reward"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    tdppo("train", *flags, "--frames", 384, "--run-dir", ref)
    tdppo("train", *flags, "--frames", 128, "--run-dir", run)
    p = tdppo("train", "--resume", "--run-dir", run, "--frames", 384)
    assert p.stdout == "" and "resumed" not in p.stderr  # --quiet came from the saved run
    same_state(ckpt.load_checkpoint(ref), ckpt.load_checkpoint(run))
    cfg = manifest_config(run)  # the resumed segment's effective config is recorded
    assert cfg["compile"] is False and cfg["frames"] == 384 and cfg["seed"] == 3
    assert cfg["hidden"] == [32, 32] and cfg["normalize_reward"] is False
    assert cfg == {**manifest_config(ref), "resume": True, "run_dir": str(run)}


def test_resume_typed_mutable_flag_applies_and_untyped_ones_stay(tmp_path):
    run = tmp_path / "run"
    tdppo("train", *SMALL, "--frames", 128, "--run-dir", run, "--checkpoint-every", 128)
    tdppo("train", "--resume", "--run-dir", run, "--frames", 512, "--keep", 1)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["000000000512"]
    cfg = manifest_config(run)
    assert cfg["keep"] == 1 and cfg["checkpoint_every"] == 128 and cfg["compile"] is False


def test_resume_typing_an_exactness_field_says_bit_exactness_is_not_promised(tmp_path):
    """--threads (like --compile, --device) may change on resume, but only when typed, and then
    stderr and metrics.csv say the run is no longer bit-exact with the uninterrupted one."""
    run = tmp_path / "run"
    tdppo("train", *SMALL, "--frames", 128, "--run-dir", run)
    quiet = tdppo("train", "--resume", "--run-dir", run, "--frames", 256)
    assert "bit-exact" not in quiet.stderr
    p = tdppo("train", "--resume", "--run-dir", run, "--frames", 384, "--threads", 2)
    assert "threads" in p.stderr and "bit-exactness" in p.stderr
    assert "no longer promised" in p.stderr
    assert "no longer promised" in (run / "metrics.csv").read_text()
    assert manifest_config(run)["threads"] == 2


@pytest.mark.parametrize("backend", ["torch", "gym"])
def test_runs_without_normalizers_train_resume_and_evaluate(backend, tmp_path):
    """Both normalizers off leaves the transform stack without buffers: training, resume and
    eval still work (they ended in a KeyError traceback on both backends)."""
    run = tmp_path / "run"
    args = [*SMALL, "--env", "Pendulum-v1", "--backend", backend, "--no-normalize-obs",
            "--no-normalize-reward", "--run-dir", run]  # fmt: skip
    tdppo("train", *args, "--frames", 128)
    tdppo("train", "--resume", "--run-dir", run, "--frames", 256)
    p = tdppo("eval", run, "--episodes", 1)
    assert json.loads(p.stdout.strip().splitlines()[-1])["episodes"] == 1
    assert "transforms" not in ckpt.load_checkpoint(run)["transforms"].keys()


def test_one_sample_minibatches_are_refused_in_one_line(tmp_path):
    p = tdppo("train", *SMALL, "--num-envs", 2, "--num-steps", 16, "--minibatches", 32,
              "--frames", 64, "--run-dir", tmp_path / "r", check=False)  # fmt: skip
    assert p.returncode == 2 and "advantage normalization needs >= 2" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_adam_eps_flag_reaches_the_optimizer(tmp_path):
    """`--adam-eps` did nothing once; typed, it is recorded in the state's hyperparameters and
    changes the trained parameters (the same run with another eps differs)."""
    runs = {}
    for eps in ("1e-5", "0.5"):
        run = tmp_path / eps
        tdppo("train", *SMALL, "--frames", 128, "--run-dir", run, "--adam-eps", eps)
        runs[eps] = ckpt.load_checkpoint(run)
        assert float(runs[eps]["hp", "adam_eps"]) == float(eps)
        assert manifest_config(run)["adam_eps"] == float(eps)
    a, b = (r["policy"].flatten_keys("/") for r in runs.values())
    assert any(not torch.equal(a[k], b[k]) for k in a.keys())


def test_resume_typed_fixed_fields_refused_listing_them_nothing_touched(tmp_path):
    run = tmp_path / "run"
    tdppo("train", *SMALL, "--frames", 128, "--run-dir", run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    p = tdppo(
        "train", "--resume", "--run-dir", run, "--frames", 256, "--num-envs", 8, "--lr", 0.1,
        "--seed", 0, "--env", "CartPole-v1", check=False,
    )  # fmt: skip
    msg = one_line_refusal(p)
    assert "num_envs: 4 -> 8" in msg and "lr: 0.00025 -> 0.1" in msg
    assert "seed" not in msg and "env:" not in msg  # typed, but equal to the saved run's
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_population_resume_needs_no_seeds(tmp_path):
    run = tmp_path / "pop"
    tdppo("train", *SMALL, "--seeds", "0-1", "--frames", 128, "--run-dir", run)
    tdppo("train", "--resume", "--run-dir", run, "--frames", 256)
    state = ckpt.load_checkpoint(run)
    assert state["counters", "frames"].tolist() == [256, 256]
    tdppo("train", "--resume", "--run-dir", run, "--frames", 384, "--seeds", "0-1")
    p = tdppo("train", "--resume", "--run-dir", run, "--frames", 512, "--seeds", "0-2", check=False)
    one_line_refusal(p)
    assert ckpt.load_checkpoint(run)["counters", "frames"].tolist() == [384, 384]
