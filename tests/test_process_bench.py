"""The whole-process benchmark (``benchmarks/process.py``): its summary against hand-worked
numbers, and the ``tdppo train`` command it times against the CLI's own parser (never timings).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if "benchmarks" in sys.modules and getattr(sys.modules["benchmarks"], "__file__", None) is None:
    del sys.modules["benchmarks"]

from benchmarks import process  # noqa: E402


def test_summary_medians_spread_and_ratios():
    # hand-worked: CleanRL walls 30, 10, 20 s -> median 20; tdppo 5, 4 -> median 4.5;
    # x_wall = 20 / 4.5, x_sps = median sps ratio (300 / 150)
    res = {
        process.CLEANRL: [
            {"wall_s": w, "first_update_s": 1.0, "sps": s, "frames": 8, "error": ""}
            for w, s in ((30.0, 100.0), (10.0, 200.0), (20.0, 150.0))
        ],
        process.WARM: [
            {"wall_s": w, "first_update_s": f, "sps": 300.0, "frames": 8, "error": ""}
            for w, f in ((5.0, 2.0), (4.0, 3.0))
        ],
        process.EAGER: [{"error": "boom", "repeat": 0}],
        "_cleanup": [{}, {}],
    }
    rows = {r["system"]: r for r in process.summarize(res)}
    assert set(rows) == {process.CLEANRL, process.WARM, process.EAGER}
    ref, warm = rows[process.CLEANRL], rows[process.WARM]
    assert (ref["wall_s"], ref["wall_min"], ref["wall_max"]) == (20.0, 10.0, 30.0)
    assert ref["x_wall"] == 1.0 and ref["x_sps"] == 1.0
    assert warm["wall_s"] == 4.5 and warm["first_update_s"] == 2.5
    assert warm["x_wall"] == pytest.approx(20.0 / 4.5)
    assert warm["x_sps"] == pytest.approx(2.0)
    assert rows[process.EAGER]["error"] == "boom" and math.isnan(rows[process.EAGER]["x_wall"])
    # another reference row (the population part uses the one agent's): ratios to it
    rows = {r["system"]: r for r in process.summarize(res, reference=process.WARM)}
    assert rows[process.WARM]["x_sps"] == 1.0
    assert rows[process.CLEANRL]["x_sps"] == pytest.approx(150.0 / 300.0)
    assert rows[process.CLEANRL]["x_wall"] == pytest.approx(4.5 / 20.0)


def test_tdppo_command_is_the_config_the_baselines_run(tmp_path):
    from benchmarks.common import HYPER
    from tdppo.cli import parse_train

    argv = process.tdppo_argv(
        "Pendulum-v1", 4096, 3, 8, 256, 10, 8, 1, compile=True, run_dir=tmp_path / "r"
    )
    assert argv[1:4] == ["-m", "tdppo", "train"]
    cfg, seeds, sweep = parse_train(argv[4:])
    assert seeds is None and sweep is None
    assert (cfg.env, cfg.frames, cfg.seed, cfg.num_envs, cfg.num_steps) == (
        "Pendulum-v1", 4096, 3, 8, 256,
    )  # fmt: skip
    assert (cfg.epochs, cfg.minibatches, cfg.threads, cfg.compile) == (10, 8, 1, True)
    assert cfg.lr == HYPER["lr"] and cfg.anneal_frames == 4096
    assert cfg.clip_eps == HYPER["clip_coef"] and cfg.ent_coef == HYPER["ent_coef"]
    assert cfg.vf_coef == HYPER["vf_coef"] and cfg.max_grad_norm == HYPER["max_grad_norm"]
    assert cfg.adam_eps == HYPER["adam_eps"] and not cfg.clip_vloss and cfg.norm_adv
    assert cfg.log_every == 1 and cfg.checkpoint_every == 0 and cfg.eval_episodes == 0
    eager = process.tdppo_argv(
        "Pendulum-v1", 4096, 3, 8, 256, 10, 8, 1, compile=False, run_dir=tmp_path / "r"
    )
    assert parse_train(eager[4:])[0].compile is False
