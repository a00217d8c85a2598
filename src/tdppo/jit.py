"""Compiling tdppo's pure functions, and checking that the compiler really captured them.

``torch.compile`` of a function it cannot trace (a vmapped function, say) may capture no graph
and run eagerly without a word; :func:`captured` reads dynamo's cache to tell.

>>> import torch
>>> def add_one(x):
...     return x + 1
>>> fn = compiled(add_one, backend="eager")
>>> captured(fn), bool(fn(torch.zeros(1)) == 1), captured(fn)
(False, True, True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["compiled", "captured"]


def compiled(fn: Callable, *, mode: str | None = None, backend: str = "inductor") -> Callable:
    """``torch.compile(fn)`` as one graph of static shapes (``fullgraph=True``, ``dynamic=False``).

    ``mode`` is torch.compile's (``"reduce-overhead"``: CUDA graphs). The result remembers
    ``fn``'s code object, which :func:`captured` looks up.
    """
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
