#!/usr/bin/env bash
# Fetch, here, every wheel the GPU machine lacks for tdppo into .whl/ (ignored by git).
#
# The GPU machine: Python 3.12, torch 2.11.0+cu130 and a fixed set of packages preinstalled
# (/work/.library/device/KINDS.md, "Python packages already there"), no network, at most 64 MiB
# carried in with the repository. So: cp312 manylinux x86_64 or pure-Python wheels, exactly one
# version of each, only what that image does not have.
#
#   bash scripts/fetch_device_wheels.sh                # core + test needs
#   MUJOCO=1 bash scripts/fetch_device_wheels.sh       # also the mujoco extra
#
# It then checks the closure: every Requires-Dist of every carried wheel (markers evaluated for
# CPython 3.12 on Linux x86_64, extras skipped) is either carried or preinstalled there, and
# prints the total size of .whl/ plus the repository that travels with it (limit 64 MiB).
# Used by benchmarks/device_check.sh (install) and scripts/rehearse_device_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
PY=${PY:-python3}

# TorchRL/tensordict: CI's exact pins (constraints.txt), which run on torch 2.11 as well.
# torchrl 0.12.0 (+ tensordict 0.12.x, which it requires) is the release of torch 2.11's time, but
# tensordict < 0.14 breaks tdppo's checkpoints: no load_memmap(allow_pickle=False), it unpickles,
# and empty sub-TensorDicts (env/pending) do not come back from disk. torchrl 0.14.1's compiled
# ops (torchrl._torchrl: replay-buffer samplers) do not load on torch 2.11 (undefined symbol,
# built for 2.14); tdppo never imports them.
WHEELS=(torchrl==0.14.1 tensordict==0.14.3 hoptorch==0.1.4)
# The rest: cp312 manylinux x86_64 or py3-none-any, as CI pins them.
WHEELS+=(
  pyvers==0.2.3 orjson==3.13.0 importlib-metadata==10.2.0 lazy-importer==0.1.0
  gymnasium==1.4.0 farama-notifications==0.0.6
  tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1
)
if [[ ${MUJOCO:-0} == 1 ]]; then
  WHEELS+=(mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 glfw==2.11.0 pyopengl==3.1.10
    websockets==17.4)
fi

# The image's packages (KINDS.md, read 2026-11-17), normalized names. Not carried.
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp"

PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

rm -rf "$DEST"
mkdir -p "$DEST"
# PIP_CONFIG_FILE=/dev/null: this machine's pip config adds local find-links and constraints
# (CPU torch pins) that have nothing to do with the GPU machine.
PIP_CONFIG_FILE=/dev/null "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"

IMAGE="$IMAGE" "$PY" - "$DEST" <<'PY'
"""Closure check: every requirement of a carried wheel is carried or preinstalled there."""
import os
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.markers import Marker  # noqa: F401
    from pip._vendor.packaging.requirements import Requirement


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


env = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
    "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
}
dest = Path(sys.argv[1])
image = set(os.environ["IMAGE"].split())
carried: dict[str, str] = {}
metas = {}
for whl in sorted(dest.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    if norm(name) in carried:
        sys.exit(f"two versions of {name} in {dest}: pip would refuse to install both")
    carried[norm(name)] = version
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metas[whl.name] = z.read(meta).decode()
    tag = whl.name[:-4].split("-")[-1]
    if not (tag == "any" or "x86_64" in tag):
        sys.exit(f"{whl.name}: not for x86_64 Linux")
missing = []
for wname, meta in metas.items():
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # an extra, or another Python / platform
        n = norm(req.name)
        if n in carried:
            if carried[n] not in req.specifier:
                missing.append(f"{wname}: needs {req}, carried {n} {carried[n]}")
        elif n == "torch":
            if "2.11.0" not in req.specifier:
                missing.append(f"{wname}: needs {req}; the GPU machine has torch 2.11.0")
        elif n not in image:
            missing.append(f"{wname}: needs {req}, neither carried nor preinstalled")
for m in missing:
    print("MISSING", m, file=sys.stderr)
if missing:
    sys.exit(1)
print(f"closure ok: {len(carried)} wheels; every requirement carried or preinstalled there")
PY

wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
repo=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- 2>/dev/null \
  | tail -1 | cut -f1)
total=$((wheels + repo))
limit=$((64 * 1024 * 1024))
awk -v w="$wheels" -v r="$repo" -v t="$total" 'BEGIN { m = 1048576
  printf "wheels %.1f MiB + repository %.1f MiB = %.1f MiB carried (limit 64 MiB)\n", w/m, r/m, t/m }'
if ((total >= limit)); then
  echo "error: over the 64 MiB the device tool carries" >&2
  exit 1
fi
