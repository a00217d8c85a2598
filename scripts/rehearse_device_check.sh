#!/usr/bin/env bash
# Rehearse benchmarks/device_check.sh here, offline, before any GPU is at hand:
#
#   bash scripts/rehearse_device_check.sh
#
# 1. A Python 3.12 venv (VENV, default /tmp/venv312) stands in for the GPU machine's image:
#    torch==2.11.0 from the registry (the CUDA build, a few GB; it runs on CPU) and, of the
#    image's preinstalled packages (KINDS.md), only the ones tdppo's tests touch. The script
#    refuses to go on if the venv holds a package that the image lacks.
# 2. .whl/ from scripts/fetch_device_wheels.sh (fetched when missing).
# 3. device_check.sh, unchanged, in a network namespace with no network at all (`unshare -n`):
#    pip --no-index --no-deps --target, the venv's python as python3, CUDA parts skipped.
# Wall-clock limits are 4x the GPU machine's (SLOW=4, BUDGET=1500 s): this CPU is shared.
# Results: benchmarks/results/device_check_rehearsal.md (+ _logs.txt). Exit 0 = passed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY312=${PY312:-$HOME/.pyenv/versions/3.12.1/bin/python}
VENV=${VENV:-/tmp/venv312}
IMAGE_PKGS=(numpy pytest pytest-xdist hypothesis cloudpickle packaging rich tqdm zipp
  typing-extensions)

if [[ ! -x $VENV/bin/python ]]; then
  "$PY312" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' \
  2>/dev/null; then
  PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q torch==2.11.0
fi
PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q "${IMAGE_PKGS[@]}"

# Nothing in the venv that the GPU machine's image would not have.
image=$(awk '/^IMAGE="/ {on = 1} on {print} on && /"$/ {exit}' scripts/fetch_device_wheels.sh |
  sed 's/^IMAGE="//; s/"$//' | tr ' ' '\n')
extra=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 |
  tr 'A-Z_.' 'a-z--' | while read -r n; do
    grep -qx -- "$n" <<<"$image" || echo "$n"
  done)
if [[ -n $extra ]]; then
  echo "error: $VENV holds packages the GPU image lacks: $extra" >&2
  exit 1
fi

if ! compgen -G ".whl/*.whl" >/dev/null; then
  bash scripts/fetch_device_wheels.sh
fi

echo "rehearsal: $("$VENV/bin/python" --version), torch $("$VENV/bin/python" -c \
  'import torch; print(torch.__version__)'), $(ls .whl/*.whl | wc -l) carried wheels, no network"
rc=0
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PATH=$VENV/bin:$PATH PYTHON=$VENV/bin/python3 \
  SITE=${SITE:-/tmp/tdppo-rehearsal-site} RESULT_NAME=device_check_rehearsal \
  BUDGET=${BUDGET:-1500} SLOW=${SLOW:-4} \
  unshare -n bash benchmarks/device_check.sh || rc=$?
exit $rc
