"""``tdppo.lazy_dynamo``: the command line imports ``torch._dynamo`` only when something uses it.

The reference is dynamo itself, imported the ordinary way in another process: the markers
tensordict, TorchRL and a user's code set while the stand-in is in place must end up as dynamo
would have set them (allowed in graph, graph breaks at disabled functions), and a warm compiled
run must train the same bits as one that imported dynamo at the start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: functions marked by each decorator, a caller that dynamo traces
# through each (graph breaks counted by torch._dynamo.explain), and dynamo's verdict on every
# function tensordict and TorchRL marked while they imported.
_PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    from tdppo import lazy_dynamo
    lazy = sys.argv[1] == "lazy"
    if lazy:
        assert lazy_dynamo.install()

    @torch.compiler.disable
    def disabled(x):
        return x.sin()

    @torch.compiler.disable(recursive=False)
    def disabled_nonrecursive(x):
        return x.cos()

    @torch.compiler.allow_in_graph
    def allowed(x):
        return x * 2

    @torch.compiler.assume_constant_result
    def constant():
        return 3

    import tensordict, torchrl.envs, torchrl.modules, torchrl.objectives  # noqa: E401, F401
    import tdppo.checkpoint, tdppo.trainer  # noqa: E401, F401

    marked = list(lazy_dynamo._allowed) if lazy else []
    before = {"installed": lazy_dynamo.installed(), "loaded": lazy_dynamo.loaded()}
    x = torch.ones(3)
    eager = [disabled(x).tolist(), disabled_nonrecursive(x).tolist(), allowed(x).tolist()]

    def f(x):
        return disabled(x + 1) + disabled_nonrecursive(x) + allowed(x) + constant()

    callers = {
        "disabled": lambda x: disabled(x + 1) * 2,
        "nonrecursive": lambda x: disabled_nonrecursive(x + 1) * 2,
        "allowed": lambda x: allowed(x + 1) * 2,
        "all": f,
    }
    breaks = {k: torch._dynamo.explain(g)(x).graph_break_count for k, g in callers.items()}
    from torch._dynamo import trace_rules
    from tensordict import utils as td_utils

    print(json.dumps({
        **before,
        "after": lazy_dynamo.loaded(),
        "eager": eager,
        "graph_breaks": breaks,
        "compiled": torch.compile(f, backend="eager")(x).tolist(),
        "allowed": trace_rules.is_callable_allowed(allowed),
        "constant": getattr(constant, "_dynamo_marked_constant", None),
        "lock_warn_constant": getattr(td_utils._lock_warn, "_dynamo_marked_constant", None),
        "marked": [trace_rules.is_callable_allowed(fn) for fn in marked],
        "n_marked": len(marked),
        "single_module": sys.modules["torch._dynamo"] is torch._dynamo,
    }))
    """
)


def _probe(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_markers_end_up_as_dynamo_sets_them():
    plain, lazy = _probe("plain"), _probe("lazy")
    # the stand-in held through tensordict's, TorchRL's and tdppo's imports
    assert lazy["installed"] and not lazy["loaded"] and lazy["after"]
    assert plain["loaded"] and not plain["installed"]
    assert lazy["n_marked"] > 0 and all(lazy["marked"])  # tensordict's allow_in_graph calls
    for key in ("eager", "graph_breaks", "compiled", "allowed", "constant"):
        assert lazy[key] == plain[key], key
    assert lazy["lock_warn_constant"] is plain["lock_warn_constant"] is True
    assert plain["graph_breaks"]["disabled"] == 1  # dynamo breaks the graph there
    assert lazy["single_module"] and plain["single_module"]


def test_submodule_of_the_stand_in_is_the_real_one():
    code = textwrap.dedent(
        """
        import sys, torch
        from tdppo import lazy_dynamo
        assert lazy_dynamo.install()
        import torch._dynamo.config as c  # a submodule first: the package imports, then it
        assert lazy_dynamo.loaded() and not lazy_dynamo.installed()
        assert sys.modules["torch._dynamo.config"] is c is torch._dynamo.config
        assert sys.modules["torch._dynamo"] is torch._dynamo
        assert type(torch._dynamo).__name__ == "module"
        from torch._inductor import config  # what broke a first attempt (inductor's __init__)
        assert sys.modules["torch._inductor.config"] is config
        print("ok")
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_install_is_a_no_op_once_dynamo_is_imported_or_turned_off():
    import torch._dynamo  # noqa: F401  (this process: the test suite imports it anyway)

    from tdppo import lazy_dynamo

    assert not lazy_dynamo.install() and lazy_dynamo.loaded()
    code = "from tdppo import lazy_dynamo; print(lazy_dynamo.install())"
    env = {**os.environ, lazy_dynamo.ENV: "0"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.stdout.strip() == "False", p.stderr[-2000:]


# tests/test_resume.py's compiled single agent, so the three share their packages
_TINY = [
    "train", "--env", "Pendulum-v1", "--num-envs", "4", "--num-steps", "4", "--epochs", "1",
    "--minibatches", "2", "--hidden", "8", "--threads", "1", "--quiet", "--eval-episodes", "0",
    "--compile", "--frames", "256", "--seed", "3",
]  # fmt: skip

_CLI = textwrap.dedent(
    """
    import json, sys
    from tdppo import lazy_dynamo
    from tdppo.cli import main
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "loaded": lazy_dynamo.loaded()}))
    """
)


def _cli(args: list[str], **env: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0, p.stderr[-3000:]
    return out


@pytest.mark.compile
@pytest.mark.xdist_group("tiny-compiled")
def test_warm_compiled_run_eval_and_inspect_never_import_dynamo_and_train_the_same_bits(tmp_path):
    from tdppo.checkpoint import load_checkpoint
    from tdppo.state import EXACT_KEYS

    _cli([*_TINY, "--run-dir", str(tmp_path / "first")])  # compiles on an empty cache
    warm = _cli([*_TINY, "--run-dir", str(tmp_path / "warm")])
    eager_import = _cli([*_TINY, "--run-dir", str(tmp_path / "plain")], TDPPO_LAZY_DYNAMO="0")
    assert not warm["loaded"] and eager_import["loaded"]
    # the other commands read a checkpoint and run the policy: no dynamo either
    for cmd in (
        ["eval", str(tmp_path / "warm"), "--episodes", "1"],
        ["inspect", str(tmp_path / "warm")],
    ):
        assert not _cli(cmd)["loaded"], cmd
    a = load_checkpoint(tmp_path / "warm")
    b = load_checkpoint(tmp_path / "plain")
    for top in EXACT_KEYS:
        la, lb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        assert set(la.keys()) == set(lb.keys()), top
        for k in la.keys():
            assert torch.equal(la[k], lb[k]), f"{top}/{k}"


def test_a_kept_reference_to_the_stand_in_forwards_once_dynamo_is_imported():
    code = textwrap.dedent(
        """
        import sys, torch
        from tdppo import lazy_dynamo
        assert lazy_dynamo.install()
        stand_in = sys.modules["torch._dynamo"]
        import torch._dynamo.eval_frame  # the real package, through a submodule
        real = sys.modules["torch._dynamo"]
        assert real is not stand_in and stand_in.disable is real.disable
        assert stand_in.allow_in_graph is real.allow_in_graph
        assert stand_in.config is real.config
        print("ok")
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
