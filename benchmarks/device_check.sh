#!/usr/bin/env bash
# GPU device check, under 8 minutes, on the GPU machine as it is: Python 3.12, torch 2.11+cu130
# preinstalled, no network. Only the wheels in .whl/ (scripts/fetch_device_wheels.sh, run here
# first) are installed, with --no-index --no-deps --target, on top of the machine's own torch.
#
# On the GPU machine (device tool: carry [".whl"], timeout_s 540):
#   bash benchmarks/device_check.sh          # results: $OUT/device_check.md (+ _logs.txt)
# Locally the results land in benchmarks/results/ instead.
#
# Rehearsal here, offline (Python 3.12 venv with the registry's torch 2.11.0, the wheels in .whl/
# only, no network; CUDA parts skipped, their command lines smoke-tested on CPU):
#   bash scripts/rehearse_device_check.sh
#
# Parts (each under `timeout`, all within BUDGET seconds, 465 by default; SLOW=k multiplies
# each part's limit):
#   env        versions, device, tdppo import
#   tests      pytest -m gpu tests/test_gpu.py (without CUDA: the whole file, CPU-reachable paths)
#   pendulum   training SPS at 4,096 Pendulum-v1 envs x 64 steps, CUDA graphs off and on
#   population 256 vmapped Pendulum-v1 agents (--seeds 0-255), total training SPS
#   cartpole   CartPole-v1 preset (100k frames), then `tdppo eval` of 10 episodes
# Without CUDA the pendulum and population parts print "skipped: no CUDA" and run their exact
# command lines at smoke size on CPU; --cudagraphs off CUDA must be refused with exit 2.
# Exit status: 0 when no part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
START=$SECONDS
BUDGET=${BUDGET:-465}
SLOW=${SLOW:-1} # multiplies each part's limit (the rehearsal, on a shared CPU, sets more)
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
RESULTS=${OUT:-$REPO/benchmarks/results}
NAME=${RESULT_NAME:-device_check}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tdppo-device-check.XXXXXX")
MD=$WORK/report.md
LOGS=$WORK/logs.txt
FAILED=0
LAST_S=0
export PYTHONUNBUFFERED=1 PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
mkdir -p "$RESULTS"
: >"$LOGS"

say() { echo "$*" | tee -a "$MD"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# part NAME LIMIT CMD...: run CMD under min(LIMIT, time left) seconds; log to $WORK/NAME.log.
part() {
  local name=$1 limit=$(($2 * SLOW)) t rc t0=$SECONDS
  shift 2
  t=$(left)
  t=$((t - 10 < limit ? t - 10 : limit))
  if ((t < 15)); then
    echo "not started: ${BUDGET}s budget spent" >"$WORK/$name.log"
    return 99
  fi
  timeout -k 20 "$t" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  LAST_S=$((SECONDS - t0))
  if ((rc == 124 || rc == 137)); then
    echo "timed out after ${t}s" >>"$WORK/$name.log"
  fi
  {
    echo "===== $name (exit $rc, $((SECONDS - t0)) s): $*"
    cat "$WORK/$name.log"
  } >>"$LOGS"
  return $rc
}

fail() {
  say "- **$1**: FAILED ($2). Last lines:"
  {
    echo '```'
    tail -n 25 "$WORK/$1.log"
    echo '```'
  } >>"$MD"
  tail -n 25 "$WORK/$1.log"
  FAILED=1
}

# sps RUN_DIR PER_MEMBER_UPDATE_FRAMES -> "steady total rows members" (steady: after 2 updates)
sps() {
  "$PY" - "$@" <<'PY'
import csv
import sys

path, per_update = sys.argv[1] + "/metrics.csv", int(sys.argv[2])
with open(path) as f:
    rows = [r for r in csv.DictReader(f) if (r.get("time_s") or "") and (r.get("frames") or "")]
members = 1
if rows and "member" in rows[0] and rows[0]["member"] != "":
    members = len({r["member"] for r in rows})
    rows = [r for r in rows if r["member"] == rows[0]["member"]]
frames = [float(r["frames"]) for r in rows]
times = [float(r["time_s"]) for r in rows]
step = frames[1] - frames[0] if len(frames) > 1 else frames[0]
scale = members if abs(step - per_update) < 0.5 else 1  # frames counted per member, or total
k = min(2, len(rows) - 2)
steady = scale * (frames[-1] - frames[k]) / (times[-1] - times[k]) if k >= 0 else float("nan")
print(f"{steady:.0f} {scale * frames[-1] / times[-1]:.0f} {len(rows)} {members}")
PY
}

TRAIN=("$PY" -m tdppo train)

say "# Device check"
say ""
say "$(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname), budget ${BUDGET}s"
say ""

# -- install: the carried wheels only --------------------------------------------------------
if ! compgen -G ".whl/*.whl" >/dev/null; then
  say "- **install**: FAILED: no .whl/*.whl (run scripts/fetch_device_wheels.sh here first)"
  exit 1
fi
rm -rf "$SITE"
if part install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$SITE" .whl/*.whl; then
  say "- **install**: ok, $(ls .whl/*.whl | wc -l) wheels into $SITE (--no-index --no-deps)"
else
  fail install "pip exit $?"
  cp "$MD" "$RESULTS/$NAME.md"
  exit 1
fi
export PYTHONPATH=$SITE:$REPO/src${PYTHONPATH:+:$PYTHONPATH}

# -- env -------------------------------------------------------------------------------------
if part env 90 "$PY" -c '
import platform, torch, tensordict, torchrl, tdppo
cuda = torch.cuda.is_available()
dev = torch.cuda.get_device_name(0) if cuda else "no CUDA"
where = tdppo.__file__.rsplit("/", 2)[0]
print(f"python {platform.python_version()}, torch {torch.__version__}, tensordict "
      f"{tensordict.__version__}, torchrl {torchrl.__version__}, tdppo from {where}; "
      f"device: {dev}")
print("CUDA" if cuda else "NOCUDA")'; then
  say "- **env**: $(head -n 1 "$WORK/env.log")"
  if command -v nvidia-smi >/dev/null; then
    say "- **gpu**: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total \
      --format=csv,noheader 2>&1 | head -n 1)"
  fi
else
  fail env "exit $?"
  cp "$MD" "$RESULTS/$NAME.md"
  cp "$LOGS" "$RESULTS/${NAME}_logs.txt"
  exit 1
fi
CUDA=0
grep -qx CUDA "$WORK/env.log" && CUDA=1

# -- tests -----------------------------------------------------------------------------------
# With CUDA: the gpu-marked tests (the CPU-reachable ones ran in the rehearsal and run in CI).
MARK=(-m gpu)
((CUDA)) || MARK=()
if part tests 150 "$PY" -m pytest -q -p no:cacheprovider "${MARK[@]}" tests/test_gpu.py; then
  summary=$(grep -E '[0-9]+ (passed|skipped)' "$WORK/tests.log" | tail -n 1)
  if ((CUDA)); then
    say "- **tests**: ok, pytest -m gpu tests/test_gpu.py: $summary [${LAST_S}s]"
  else
    say "- **tests**: ok, tests/test_gpu.py: $summary (the CUDA ones skipped: no CUDA)" \
      "[${LAST_S}s]"
  fi
else
  fail tests "pytest exit $?"
fi

# -- pendulum: 4,096 envs, CUDA graphs off / on ----------------------------------------------
PEND=(--env Pendulum-v1 --anneal-frames 0 --quiet --eval-episodes 0 --checkpoint-every 0)
if ((CUDA)); then
  for mode in plain cudagraphs; do
    extra=()
    [[ $mode == cudagraphs ]] && extra=(--cudagraphs)
    if part "pendulum-$mode" 110 "${TRAIN[@]}" "${PEND[@]}" --num-envs 4096 --num-steps 64 \
      --frames $((4096 * 64 * 10)) --device cuda "${extra[@]}" --run-dir "$WORK/pendulum-$mode"; then
      read -r steady total rows _ < <(sps "$WORK/pendulum-$mode" $((4096 * 64)))
      say "- **pendulum-$mode**: ok, 4,096 envs x 64 steps, $rows updates: $steady training SPS" \
        "after 2 updates ($total with compilation) [${LAST_S}s]"
    else
      fail "pendulum-$mode" "exit $?"
    fi
  done
else
  say "- **pendulum**: skipped: no CUDA (4,096 envs, CUDA graphs off/on)"
  if part pendulum-smoke 120 "${TRAIN[@]}" "${PEND[@]}" --num-envs 64 --num-steps 16 --frames 4096 \
    --device cpu --no-compile --run-dir "$WORK/pendulum-smoke"; then
    read -r steady total rows _ < <(sps "$WORK/pendulum-smoke" $((64 * 16)))
    say "- **pendulum-smoke**: ok, the same command line on CPU at 64 envs x 16 steps, eager:" \
      "$rows updates, $steady SPS"
  else
    fail pendulum-smoke "exit $?"
  fi
  part pendulum-cudagraphs-refused 60 "${TRAIN[@]}" "${PEND[@]}" --num-envs 64 --num-steps 16 \
    --frames 1024 --device cpu --cudagraphs --run-dir "$WORK/refused"
  rc=$?
  lines=$(wc -l <"$WORK/pendulum-cudagraphs-refused.log")
  if ((rc == 2 && lines == 1)); then
    say "- **pendulum-cudagraphs-refused**: ok, --cudagraphs on CPU: exit 2," \
      "\"$(cat "$WORK/pendulum-cudagraphs-refused.log")\""
  else
    fail pendulum-cudagraphs-refused "exit $rc with $lines lines; expected exit 2, one line"
  fi
fi

# -- population: 256 vmapped agents ----------------------------------------------------------
POP=(--env Pendulum-v1 --anneal-frames 0 --quiet --eval-episodes 0 --checkpoint-every 0)
if ((CUDA)); then
  if part population 130 "${TRAIN[@]}" "${POP[@]}" --seeds 0-255 --num-envs 8 --num-steps 256 \
    --frames $((8 * 256 * 6)) --device cuda --run-dir "$WORK/population"; then
    read -r steady total rows members < <(sps "$WORK/population" $((8 * 256)))
    say "- **population**: ok, $members agents x 8 envs x 256 steps, $rows updates:" \
      "$steady training SPS, all agents, after 2 updates ($total with compilation) [${LAST_S}s]"
  else
    fail population "exit $?"
  fi
else
  say "- **population**: skipped: no CUDA (256 agents)"
  if part population-smoke 150 "${TRAIN[@]}" "${POP[@]}" --seeds 0-3 --num-envs 8 --num-steps 32 \
    --frames $((8 * 32 * 3)) --device cpu --no-compile --run-dir "$WORK/population-smoke"; then
    read -r steady total rows members < <(sps "$WORK/population-smoke" $((8 * 32)))
    say "- **population-smoke**: ok, the same command line on CPU, $members agents, eager:" \
      "$rows updates, $steady SPS"
  else
    fail population-smoke "exit $?"
  fi
fi

# -- cartpole: a short learning run, then eval -----------------------------------------------
if ((CUDA)); then
  CP=(--device cuda)
else
  CP=(--device cpu --no-compile)
fi
part cartpole 150 "${TRAIN[@]}" --env CartPole-v1 --frames 100000 --seed 0 --quiet --eval-episodes 0 \
  --checkpoint-every 0 "${CP[@]}" --run-dir "$WORK/cartpole"
rc=$?
cp_s=${LAST_S:-0}
if ((rc != 0)); then
  fail cartpole "exit $rc"
elif ! part cartpole-eval 60 "$PY" -m tdppo eval "$WORK/cartpole" --episodes 10 --seed 100; then
  fail cartpole-eval "exit $?"
else
  ret=$(grep '^{' "$WORK/cartpole-eval.log" | tail -n 1 |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["mean_return"])')
  read -r steady total rows _ < <(sps "$WORK/cartpole" $((8 * 128)))
  if "$PY" -c "import sys; sys.exit(not float('$ret') >= 150)"; then
    say "- **cartpole**: ok, CartPole-v1 preset, 100k frames on ${CP[1]}: eval mean return" \
      "$ret over 10 episodes (>= 150 required; the preset reaches 500), $total SPS" \
      "[${cp_s}s training]"
  else
    echo "eval mean return $ret < 150" >>"$WORK/cartpole-eval.log"
    fail cartpole-eval "did not learn: mean return $ret"
  fi
fi

say ""
if ((FAILED)); then
  say "**Result: FAILED** after $((SECONDS - START)) s."
else
  say "**Result: all parts ok** after $((SECONDS - START)) s."
fi
cp "$MD" "$RESULTS/$NAME.md"
cp "$LOGS" "$RESULTS/${NAME}_logs.txt"
echo "results: $RESULTS/$NAME.md (logs: $RESULTS/${NAME}_logs.txt)"
rm -rf "$WORK"
exit $FAILED
