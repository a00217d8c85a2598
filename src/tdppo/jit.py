"""Compiling tdppo's pure functions, and checking that the compiler really captured them.

``torch.compile`` of a function it cannot trace (a vmapped function, say) may capture no graph
and run eagerly without a word; :func:`captured` reads dynamo's cache to tell.

Compiled code is kept across processes in torch's own caches (inductor's FX graph cache and
AOTAutograd's cache, both on by default in torch 2.13), in one stable folder,
:func:`cache_dir`: ``$TORCHINDUCTOR_CACHE_DIR`` when a user set it (their setting is never
changed; torch's own default, which torch itself writes into that variable, is not a user's),
else ``$TDPPO_CACHE_DIR/inductor``, else ``$XDG_CACHE_HOME/tdppo/inductor`` (default
``~/.cache/tdppo/inductor``), rather than torch's default under ``/tmp``, which a reboot may
empty. Torch keys each entry on the traced graph, the torch version, its config and the machine,
so a change to tdppo's code (or to torch) compiles anew instead of reusing a stale artifact.
Dynamo still traces the Python in each new process; what a warm cache skips is the compilation
(inductor's lowering, code generation and the C++ compiler). Delete the folder to start cold.

>>> import torch
>>> def add_one(x):
...     return x + 1
>>> fn = compiled(add_one, backend="eager")
>>> captured(fn), bool(fn(torch.zeros(1)) == 1), captured(fn)
(False, True, True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["compiled", "captured", "cache_dir", "guards_checked"]

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""torch's own variable for the folder of its compile caches (read when torch compiles)."""


def cache_dir() -> Path:
    """The folder of the persistent compile caches (see the module docstring); sets
    ``$TORCHINDUCTOR_CACHE_DIR`` to it when the user has not set it, before torch compiles."""
    user = os.environ.get(CACHE_ENV)
    if user and os.path.abspath(user) != _torch_default_dir():
        return Path(user)
    base = os.environ.get("TDPPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "tdppo",
    )
    path = Path(base) / "inductor"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home, say: torch's default folder still works
        from torch._inductor.runtime.cache_dir_utils import cache_dir as torch_cache_dir

        return Path(torch_cache_dir())
    os.environ[CACHE_ENV] = str(path)
    return path


def _torch_default_dir() -> str:
    """torch's own default folder, which ``import tensordict`` already writes into
    ``$TORCHINDUCTOR_CACHE_DIR`` (torch's ``cache_dir()`` records its choice there): that value
    is torch's, not a user's (a user who sets exactly this folder gets tdppo's instead)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(default_cache_dir())


def compiled(fn: Callable, *, mode: str | None = None, backend: str = "inductor") -> Callable:
    """``torch.compile(fn)`` as one graph of static shapes (``fullgraph=True``, ``dynamic=False``).

    ``mode`` is torch.compile's (``"reduce-overhead"``: CUDA graphs). The result remembers
    ``fn``'s code object, which :func:`captured` looks up. Compiled artifacts persist in
    :func:`cache_dir`.
    """
    cache_dir()
    _settle_tensordict_memo()
    out = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode, backend=backend)
    out.__tdppo_code__ = fn.__code__
    return out


def _settle_tensordict_memo() -> None:
    """Compiled graphs guard on the size of tensordict's type memo (``_TENSORCLASS_MEMO``), which
    eager tensordict code outside the graphs grows as it meets types; met first here, the types
    the driver uses leave it unchanged afterwards, so no graph recompiles for it."""
    from tensordict import TensorDict, is_tensor_collection
    from tensordict.memmap import MemoryMappedTensor

    for t in (dict, list, tuple, str, int, float, bool, type(None), torch.Size, torch.Tensor,
              torch.nn.Parameter, TensorDict, MemoryMappedTensor):  # fmt: skip
        is_tensor_collection(t)


def captured(fn: Callable) -> bool:
    """Whether ``fn`` (from :func:`compiled`) holds at least one dynamo graph, once called.

    An entry of dynamo's cache for ``fn``'s code object whose bytecode calls a
    ``__compiled_fn`` ran a captured graph; none means ``fn`` runs eagerly.
    """
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    code = getattr(fn, "__tdppo_code__", None)
    if code is None:
        return False
    for entry in _debug_get_cache_entry_list(code):
        if any(name.startswith("__compiled_fn") for name in entry.code.co_names):
            return True
    return False


def guards_checked(checked: bool):
    """A context in which compiled functions check dynamo's guards (``checked``), or only the
    guards that tell their compiled variants apart (``torch.compiler.set_stance``'s
    ``skip_guard_eval_unsafe``).

    The driver checks every guard in its first iteration, which compiles (or loads) each variant
    the step meets, and skips them afterwards: each later iteration calls the same compiled
    functions on inputs of the same structure, shapes, dtypes and strides (the state is updated
    in place), so the guards can only pass again. Anything else compiled (evaluation, a user's
    own code) runs outside this context, guards checked.
    """
    if checked:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
