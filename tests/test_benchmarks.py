"""The benchmark harness: its pieces against hand-worked cases and gymnasium, and the whole
``python -m benchmarks all --smoke`` run, checking files, columns and finite numbers (never
timings)."""

from __future__ import annotations

import csv
import math
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# torchrl's wheel installs a top-level ``benchmarks`` namespace package into site-packages; ours
# (a regular package) wins as soon as the repo root is on the path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if "benchmarks" in sys.modules and getattr(sys.modules["benchmarks"], "__file__", None) is None:
    del sys.modules["benchmarks"]

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import common, learning, throughput  # noqa: E402

# one worker runs this file in order, so the module's smoke fixture (about a minute) runs once
pytestmark = pytest.mark.xdist_group("benchmarks")

BASELINES = ["SB3", "CleanRL-style", "TorchRL-style"]
TDPPO_ROWS = ["tdppo torch compiled", "tdppo torch eager", "tdppo gym compiled"]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def finite(x: str) -> bool:
    try:
        return math.isfinite(float(x))
    except ValueError:
        return False


def tdppo_ready() -> bool:
    """tdppo's trainer and envs exist (decided independently of the harness)."""
    try:
        import tdppo

        tdppo.Config, tdppo.train  # noqa: B018
        tdppo.make_env("Pendulum-v1", 2, device="cpu", backend="torch")
    except (ImportError, AttributeError, NotImplementedError):
        return False
    return True


# ----------------------------------------------------------------------------- pieces


def test_steady_sps_excludes_first_iteration():
    # hand-worked: 2048 frames per iteration, the first took 10 s (compile), then 1 s each
    curve = [(2048, 10.0, 0.0), (4096, 11.0, 0.0), (6144, 12.0, 0.0)]
    assert common.steady_sps(curve) == pytest.approx(4096 / 2.0)
    assert common.steady_sps([(2048, 4.0, 0.0)]) == pytest.approx(512.0)
    assert math.isnan(common.steady_sps([]))


def test_interleaved_order_and_failures():
    calls = []

    def row(name, fail_at=None):
        def fn(r):
            calls.append((name, r))
            if r == fail_at:
                raise common.Unavailable(f"{name} missing")
            return {"sps": float(r)}

        return fn

    out = common.interleaved(
        {"A": row("A"), "B": row("B", fail_at=0), "C": row("C")}, 3, log=lambda s: None
    )
    # A B C, then A C, A C: a failed row is not retried
    assert calls == [("A", 0), ("B", 0), ("C", 0), ("A", 1), ("C", 1), ("A", 2), ("C", 2)]
    assert [r["sps"] for r in out["A"]] == [0.0, 1.0, 2.0]
    assert out["B"] == [{"error": "B missing", "repeat": 0}]
    assert common.finite_median([r["sps"] for r in out["C"]]) == 1.0


def test_interleaved_survives_a_crash():
    def boom(r):
        raise ValueError("bad row")

    out = common.interleaved({"X": boom}, 2, log=lambda s: None)
    assert out["X"] == [{"error": "ValueError: bad row", "repeat": 0}]


def test_finite_median_and_fmt():
    assert common.finite_median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    assert math.isnan(common.finite_median([float("nan")]))
    assert common.fmt(float("nan")) == "-"
    assert common.fmt(12345.6) == "12,346"
    assert common.fmt(0.12345) == "0.123"


def test_evaluate_raw_matches_a_plain_gymnasium_loop():
    # reference: gymnasium itself, always pushing left, episodes reset with seed 10000 + i
    expected = []
    for i in range(3):
        env = gym.make("CartPole-v1")
        env.reset(seed=10_000 + i)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(0)
            total += r
            done = term or trunc
        expected.append(total)
    got = common.evaluate_raw("CartPole-v1", lambda obs: np.int64(0), episodes=3)
    assert got == pytest.approx(np.mean(expected))


def test_markdown_and_csv_writers(tmp_path):
    rows = [{"a": 1, "b": 2.5}, {"a": 2, "b": float("nan")}]
    md = common.write_markdown(
        tmp_path / "x.md", "T", {"cpu": "c"}, [("S", common.markdown_table(rows, ["a", "b"]))]
    )
    text = md.read_text()
    assert "| cpu | c |" in text and "| a | b |" in text and "| 2 | - |" in text
    cols, got = read_csv(common.write_csv(tmp_path / "x.csv", rows, ["a", "b"]))
    assert cols == ["a", "b"] and got[0] == {"a": "1", "b": "2.5"}


def test_machine_facts_name_everything_the_issue_asks():
    facts = common.machine_facts(threads=1)
    for key in ("cpu", "logical cores", "threads used", "torch", "torchrl", "tensordict"):
        assert facts[key]
    for key in ("gymnasium", "stable-baselines3", "device", "git commit", "date (UTC)"):
        assert facts[key]
    assert facts["threads used"] == "1"


def test_learning_curves_align_and_fill_gaps():
    nan = float("nan")
    a = [(10, 1.0, nan), (20, 2.0, 5.0), (30, 3.0, nan)]
    b = [(10, 3.0, 1.0), (20, 4.0, nan), (30, 5.0, 2.0), (40, 6.0, 9.0)]
    frames, wall, ret = learning.aligned([a, b])
    np.testing.assert_array_equal(frames, [10, 20, 30])
    np.testing.assert_allclose(wall, [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(ret[0, 1:], [5.0, 5.0])
    assert math.isnan(ret[0, 0])
    np.testing.assert_array_equal(ret[1], [1.0, 1.0, 2.0])


def test_throughput_summary_medians_and_ratios():
    # hand-worked: medians of 3 repeats, ratio to the CleanRL-style median; a failed row keeps
    # its error and NaN numbers
    runs = [
        {"env": "E", "system": "CleanRL-style", "sps": s, "sps_total": s, "frames": 8, "error": ""}
        for s in (100.0, 300.0, 200.0)
    ] + [
        {"env": "E", "system": "SB3", "sps": s, "sps_total": s, "frames": 8, "error": ""}
        for s in (500.0, 400.0, 600.0)
    ]
    runs.append({"env": "E", "system": "tdppo torch eager", "error": "missing"})
    rows = {r["system"]: r for r in throughput.summarize(runs)}
    assert rows["CleanRL-style"]["sps"] == 200.0 and rows["CleanRL-style"]["x_cleanrl"] == 1.0
    assert rows["SB3"]["sps"] == 500.0 and rows["SB3"]["x_cleanrl"] == 2.5
    assert (rows["SB3"]["sps_min"], rows["SB3"]["sps_max"]) == (400.0, 600.0)
    assert rows["tdppo torch eager"]["error"] == "missing"
    assert math.isnan(rows["tdppo torch eager"]["sps"])


def test_modes_use_whole_batches():
    for s in throughput.MODES.values():
        assert s.frames % (s.num_envs * s.num_steps) == 0
        assert (s.num_envs * s.num_steps) % s.minibatches == 0
    for s in learning.MODES.values():
        assert all(f % (s.num_envs * s.num_steps) == 0 for f in s.frames.values())
    assert learning.MODES["default"].seeds >= 3
    assert set(learning.MODES["full"].frames) >= {"Pendulum-v1", "CartPole-v1", "Acrobot-v1"}
    assert "HalfCheetah-v5" in learning.MODES["full"].frames


def test_sweep_keeps_batches_sane():
    for n in (8, 32, 128, 512, 1024, 2048, 4096):
        steps = throughput.sweep_steps(n)
        assert 16 <= steps <= 256 and n * steps <= 65536
        assert (n * steps) % 8 == 0


def test_external_benchmarks_get_mode_threads_and_out(monkeypatch, tmp_path):
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        return 0

    fake = types.ModuleType("benchmarks.resume_integrity")
    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "benchmarks.resume_integrity", fake)
    rc = cli.main(["resume_integrity", "--smoke", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    assert seen["argv"] == ["--smoke", "--threads", "1", "--out", str(tmp_path)]


def test_external_failure_is_reported_not_raised(monkeypatch, capsys):
    fake = types.ModuleType("benchmarks.update_speed")
    fake.main = lambda argv: 3
    monkeypatch.setitem(sys.modules, "benchmarks.update_speed", fake)
    assert cli.main(["update_speed", "--quick"]) == 1
    assert "update_speed: failed" in capsys.readouterr().out


def test_unknown_name_is_a_usage_error():
    with pytest.raises(SystemExit):
        cli.main(["nope"])


# ----------------------------------------------------------------------------- the whole run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["all", "--smoke", "--threads", "1", "--out", str(out)])
    return out, rc, buf.getvalue()


@pytest.mark.slow
def test_smoke_all_runs_every_benchmark(smoke):
    out, rc, log = smoke
    assert rc == 0, log[-3000:]
    for name in cli.NAMES:
        present = (REPO / "benchmarks" / f"{name}.py").exists()
        assert f"### {name}: {'ok' if present else 'absent'}" in log, log[-3000:]


@pytest.mark.slow
def test_smoke_throughput_files(smoke):
    out, _, _ = smoke
    cols, rows = read_csv(out / "throughput-smoke.csv")
    assert cols == throughput.SUMMARY_COLS
    by = {r["system"]: r for r in rows}
    assert set(by) == set(BASELINES + TDPPO_ROWS)
    for name in BASELINES:
        assert by[name]["error"] == ""
        assert finite(by[name]["sps"]) and float(by[name]["sps"]) > 0
        assert finite(by[name]["x_cleanrl"])
    assert float(by["CleanRL-style"]["x_cleanrl"]) == 1.0
    ready = tdppo_ready()
    for name in TDPPO_ROWS:
        if ready:
            assert by[name]["error"] == "" and finite(by[name]["sps"]), by[name]
        else:
            assert "not available yet" in by[name]["error"]

    cols, rows = read_csv(out / "throughput-ceilings-smoke.csv")
    assert cols == throughput.CEILING_COLS
    for r in rows:
        if r["system"] in BASELINES:
            for c in ("env_only_sps", "update_only_fps", "floor_sps", "train_vs_floor"):
                assert finite(r[c]) and float(r[c]) > 0, (r["system"], c)

    cols, rows = read_csv(out / "throughput-sweep-smoke.csv")
    assert cols == throughput.SWEEP_COLS
    assert [int(r["num_envs"]) for r in rows] == list(throughput.MODES["smoke"].sweep)
    if ready:
        assert all(finite(r["train_sps"]) and finite(r["env_only_sps"]) for r in rows)

    cols, rows = read_csv(out / "throughput-runs-smoke.csv")
    assert cols == throughput.RUN_COLS
    md = (out / "throughput-smoke.md").read_text()
    for needle in ("| cpu |", "| torchrl |", "| git commit |", "## Training SPS", "x_cleanrl"):
        assert needle in md
    for png in out.glob("throughput*-smoke.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "throughput-Pendulum-v1-smoke.png").exists()
    assert (out / "throughput-sweep-smoke.png").exists()


@pytest.mark.slow
def test_smoke_learning_files(smoke):
    out, _, _ = smoke
    cols, rows = read_csv(out / "learning-smoke.csv")
    assert cols == learning.SUMMARY_COLS
    envs = set(learning.MODES["smoke"].frames)
    assert {(r["env"], r["system"]) for r in rows} == {
        (e, s) for e in envs for s in ("tdppo", "SB3", "CleanRL-style")
    }
    ready = tdppo_ready()
    for r in rows:
        if r["system"] == "tdppo" and not ready:
            assert "not available yet" in r["error"]
            continue
        assert r["error"] == "", r
        for c in ("final_return", "eval_return", "wall_s", "sps"):
            assert finite(r[c]), (r["env"], r["system"], c)

    cols, curves = read_csv(out / "learning-curves-smoke.csv")
    assert cols == learning.CURVE_COLS
    assert {(r["env"], r["system"]) for r in curves} >= {
        (e, s) for e in envs for s in ("SB3", "CleanRL-style")
    }
    assert all(finite(r["frames"]) and finite(r["wall_s"]) for r in curves)
    md = (out / "learning-smoke.md").read_text()
    assert "| cpu |" in md and "## Final and evaluation returns" in md
    for env_id in envs:
        assert (out / f"learning-{env_id}-smoke.png").read_bytes()[:4] == b"\x89PNG"
