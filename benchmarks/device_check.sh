#!/usr/bin/env bash
# GPU device check (under 8 minutes): the CUDA-marked tests, then training throughput on
# CUDA for Pendulum-v1 at 4,096 envs. Run from the repository root on a machine with a GPU:
#   bash benchmarks/device_check.sh            (results land in $OUT or benchmarks/results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv && .venv/bin/pip install --quiet torch==2.13.0 && .venv/bin/pip install --quiet -e ".[test]"
fi
PY=.venv/bin/python
$PY -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')" | tee "$OUT/device_check.txt"
timeout 300 $PY -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tail -15 | tee -a "$OUT/device_check.txt"
timeout 240 $PY - <<'PY' 2>&1 | tee -a "$OUT/device_check.txt"
import csv, tempfile, time, torch
import tdppo
with tempfile.TemporaryDirectory() as d:
    cfg = tdppo.Config.for_env("Pendulum-v1", device="cuda", num_envs=4096, num_steps=64,
                               minibatches=8, epochs=10, frames=4096 * 64 * 12, run_dir=d,
                               quiet=True, eval_episodes=0, checkpoint_every=0)
    tdppo.train(cfg)
    rows = list(csv.DictReader(open(f"{d}/metrics.csv")))
    # steady state: frames and time between the 3rd and last row (compile excluded)
    a, b = rows[2], rows[-1]
    sps = (float(b["frames"]) - float(a["frames"])) / (float(b["time_s"]) - float(a["time_s"]))
    print(f"Pendulum-v1 4096 envs on {torch.cuda.get_device_name(0)}: {sps:,.0f} training SPS")
PY
