"""Compiling tdppo's pure functions, and checking that the compiler really captured them.

On the CPU, :func:`compiled` makes an :class:`Aot` function: ``make_fx`` traces it into an
aten graph and AOTInductor compiles that graph into a package (a shared library) that later
processes load in milliseconds; each call then runs the package's C++ runner directly, without
dynamo's per-call frame, guards and Python wrapper. On CUDA (and with ``$TDPPO_COMPILER=dynamo``)
it is ``torch.compile``; a ``torch.compile`` of a function it cannot trace (a vmapped function,
say) may capture no graph and run eagerly without a word, and :func:`captured` tells.

Compiled code is kept across processes in one stable folder, :func:`cache_dir`:
``$TORCHINDUCTOR_CACHE_DIR`` when a user set it (their setting is never changed; torch's own
default, which torch itself writes into that variable, is not a user's), else
``$TDPPO_CACHE_DIR/inductor``, else ``$XDG_CACHE_HOME/tdppo/inductor`` (default
``~/.cache/tdppo/inductor``), rather than torch's default under ``/tmp``, which a reboot may
empty. AOT packages live in its ``aot`` subfolder, keyed on the traced graph (code and
constants), the input layout, torch's version, the thread count and the CPU's vector ISA;
torch.compile's artifacts are torch's own FX graph and AOTAutograd caches, which torch keys on
the traced graph, its version, its config and the machine. Either way a change to tdppo's code
(or to torch) compiles anew instead of reusing a stale artifact. A warm cache skips the
compilation (inductor's lowering, code generation and the C++ compiler), and for AOT packages
the tracing too: ``aot/index`` maps each function's :func:`tdppo.fingerprint.fingerprint` (its
code and every value it closes over, read without running it) and input layout to the package
its trace gave. Delete the folder to start cold. On a cold cache, the driver's first iteration
runs inside :func:`compile_ahead`, which compiles every package the step needs side by side.
Packages compute ``tanh`` with :func:`_tanh` (within 2 ulp of float64, not bit-equal to torch's)
and take the CPU's vector ISAs on trust while compiling (a failed compile probes them).

>>> import torch
>>> def add_one(x):
...     return x + 1
>>> fn = compiled(add_one, backend="eager")
>>> captured(fn), bool(fn(torch.zeros(1)) == 1), captured(fn)
(False, True, True)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from tdppo import lazy_dynamo
from tdppo.fingerprint import fingerprint

__all__ = ["compiled", "captured", "cache_dir", "guards_checked", "compile_ahead", "fold", "Aot"]

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
    """torch's own default folder, which torch writes into ``$TORCHINDUCTOR_CACHE_DIR`` once
    inductor is imported (``import tensordict`` does so, unless :mod:`tdppo.lazy_dynamo` holds
    dynamo back; torch's ``cache_dir()`` records its choice there): that value is torch's, not
    a user's (a user who sets exactly this folder gets tdppo's instead)."""
    # torch's default_cache_dir(), written out: importing it imports torch._inductor, and with
    # it torch._dynamo (tdppo.lazy_dynamo), in every process; tests/test_jit_cache.py compares them
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    user = re.sub(r'[\\/:*?"<>|]', "_", user)
    return os.path.abspath(os.path.join(tempfile.gettempdir(), "torchinductor_" + user))


COMPILER_ENV = "TDPPO_COMPILER"
"""``aot`` (default) or ``dynamo``: how :func:`compiled` compiles for the CPU (see :class:`Aot`)."""


def compiled(fn: Callable, *, mode: str | None = None, backend: str = "inductor") -> Callable:
    """``fn`` compiled as one graph of static shapes.

    On the CPU (inductor, no ``mode``) it is an :class:`Aot` function: traced with ``make_fx``
    and compiled ahead of time by AOTInductor into a package kept in :func:`cache_dir`, which a
    later process loads instead of compiling (``$TDPPO_COMPILER=dynamo`` selects the other way).
    Otherwise, and for CUDA inputs, it is ``torch.compile(fn, fullgraph=True, dynamic=False)``
    (``mode`` is torch.compile's: ``"reduce-overhead"`` for CUDA graphs), whose artifacts
    persist in torch's caches in the same folder. The result remembers ``fn``'s code object,
    which :func:`captured` looks up.
    """
    cache_dir()
    _settle_tensordict_memo()
    if backend == "inductor" and mode is None and os.environ.get(COMPILER_ENV, "aot") == "aot":
        return Aot(fn)
    out = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode, backend=backend)
    out.__tdppo_code__ = fn.__code__
    return out


AOT_FORMAT = 2
"""Bumped when this module changes what it puts in a package (part of every package's key)."""

_TANH_SMALL = 0.625
_TANH_POLY = (0.9999999999948348, -0.33333333162135753, 0.13333324005973995,
              -0.05396630956676123, 0.021849439238019408, -0.008749526386030685,
              0.003225606463370346, -0.0008011311399146921)  # fmt: skip
"""``tanh(x) / x`` as a polynomial in ``x * x`` for ``|x| < 0.625``: a float64 least-squares fit
(relative error, Chebyshev nodes)."""


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` as :class:`Aot` packages compute it: an odd polynomial near 0,
    ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` elsewhere; within 2 ulp of float64 ``tanh``
    (tested; 1.5 measured, torch's own is within 1). Why: inductor's CPU ``tanh`` (Sleef's)
    costs ~2.8 ns per element, this about half."""
    a = x.abs()
    e = torch.exp(-2.0 * a)
    far = torch.copysign((1.0 - e) / (1.0 + e), x)
    z = x * x
    p = _TANH_POLY[-1]
    for c in reversed(_TANH_POLY[:-1]):
        p = p * z + c
    return torch.where(a < _TANH_SMALL, x * p, far)


_LOWERINGS = {torch.ops.aten.tanh.default: _tanh}
"""What the traced graph computes in place of an aten op (``make_fx``'s decomposition table).
Autograd sits above it: ``tanh``'s gradient is still ``1 - y * y`` of the value computed."""

_INDUCTOR = {"realize_cpu_opcount_threshold": 8, "aot_inductor.precompile_headers": False}
"""AOTInductor's options for every package. Pointwise results of more than 8 ops are stored
once, not recomputed in each kernel that reads them (inductor's CPU default is 50): with
:func:`_tanh`'s ~30 ops, a population's minibatch step ran ~13% faster than with 50. No
precompiled runtime header: inductor builds it (156 MB, ~6 s of g++ here) under
``/tmp/torchinductor_<user>``, outside :func:`cache_dir`, so a fresh machine's first compile
took 26-28 s with it against 19-21 s without (17 s with it already built)."""

_TRUST_ISA = {"cpp.vec_isa_ok": True}
"""Tried first when the user has not set ``TORCHINDUCTOR_VEC_ISA_OK``: inductor takes the vector
ISAs the CPU lists instead of compiling and loading a probe program for each, ~6 s of a cold
start here (into an empty compile cache, as on a fresh machine). A compile that fails so is
tried again with the probes."""

_checking = True  # False inside guards_checked(False): inputs are trusted to keep their layout


class Aot:
    """A pure function of nested dicts / lists / tuples of tensors, compiled ahead of time.

    On the first call with a given input layout (tree structure, and each tensor's shape,
    dtype, stride and device), ``make_fx`` traces ``fn`` into an aten graph (``torch.func``
    transforms, ``vmap`` and ``grad``, are traced through); the graph, its constants, the input
    layout, torch's version, the thread count and the CPU's vector ISA key a package that
    AOTInductor compiles once (``torch.export`` of the graph, then
    ``torch._inductor.aoti_compile_and_package``) and writes atomically to
    ``cache_dir()/aot/<key>.pt2``. Any process that traces the same graph loads that package
    (milliseconds) instead of compiling; changed code traces a different graph, hence a new key.
    Before tracing, the function's fingerprint (:mod:`tdppo.fingerprint`) with the layout and
    the global settings tracing reads is looked up in ``aot/index``: a process that meets the
    same code and values again loads the package without tracing (a function with no
    fingerprint, one closing over a lock say, is always traced).
    Calls then go straight to the package's C++ runner: no dynamo frame, guards or Python
    wrapper per call (why it is hand-written: torch 2.13 offers no cache for this path, and
    dynamo's per-call cost and tracing time were most of tdppo's step on the CPU; README,
    Performance).

    Each call checks the tree structure (dict keys, sequence lengths). Inside
    :func:`guards_checked` ``(False)`` the shapes, dtypes and strides are trusted to be the
    ones the call structure last had (the driver keeps them); elsewhere they are checked and a
    new layout compiles a new variant. Inputs on a CUDA device go to ``torch.compile`` instead.
    Outputs may alias inputs (a leaf passed through unchanged).
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__tdppo_code__ = fn.__code__
        self.__name__ = getattr(fn, "__name__", "fn")
        self._variants: dict[tuple, _Variant] = {}
        self._by_structure: dict[tuple, _Variant] = {}
        self._recipes: dict[tuple, str | None] = {}
        self._dynamo: Callable | None = None

    @property
    def loaded(self) -> bool:
        """Whether a package has been compiled or loaded (what :func:`captured` reports)."""
        return bool(self._variants)

    def variant(self, args: tuple) -> tuple[_Variant | None, list]:
        """The compiled variant for ``args`` (compiled or loaded now if new) and their leaves;
        ``None`` when the inputs are on a CUDA device (``torch.compile`` serves them)."""
        leaves: list = []
        structure = _flatten(args, leaves)
        v = self._by_structure.get(structure)
        if v is None or _checking:
            layout = (structure, *_layout(leaves))
            v = self._variants.get(layout)
            if v is None:
                if any(t.device.type != "cpu" for t in leaves):
                    return None, leaves
                v = _Variant.indexed(self._recipe(layout), args)  # no tracing when warm
                if v is not None:
                    self._variants[layout] = v
                else:
                    t = _Traced.of(self.fn, args, leaves)
                    if _ahead is not None and not t.path.exists():  # compile_ahead, cold cache
                        _run_ahead(self, layout, t)
                        v = self._variants.get(layout)
                    if v is None:
                        v = self._built(layout, args, leaves, t)
            self._by_structure[structure] = v
        return v, leaves

    def _recipe(self, layout: tuple) -> str | None:
        """The key of the traced graph for ``layout`` computed without tracing: the function's
        :func:`tdppo.fingerprint.fingerprint` (its code and all it closes over) and what else
        tracing reads (global settings, versions); ``None`` when it has no fingerprint."""
        if layout not in self._recipes:  # once per layout: the lookup and the index write
            fp = fingerprint(self.fn)
            world = (AOT_FORMAT, torch.__version__, sys.version_info[:2], torch.get_num_threads(),
                     torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
                     torch.get_float32_matmul_precision(), torch.is_autocast_enabled("cpu"),
                     _isa(), layout)  # fmt: skip
            self._recipes[layout] = (
                None if fp is None else hashlib.sha256(f"{world!r}{fp}".encode()).hexdigest()[:40]
            )
        return self._recipes[layout]

    def _built(self, layout: tuple, args: tuple, leaves: list, traced: _Traced) -> _Variant:
        """The variant of ``traced`` (its package loaded, or compiled first), also indexed
        under its recipe so that later processes skip the tracing."""
        v = self._variants[layout] = _Variant.build(self.fn, args, leaves, traced=traced)
        _index_put(self._recipe(layout), v)
        return v

    def _record(self, args: tuple) -> Any:
        """During :func:`compile_ahead`'s dry run: note this input layout, and run ``fn`` on
        the fake inputs for fake outputs of the right layout."""
        leaves: list = []
        layout = (_flatten(args, leaves), *_layout(leaves))
        _recording.setdefault((id(self), layout), (self, args))
        return self.fn(*args)

    def __call__(self, *args: Any) -> Any:
        if _recording is not None:
            return self._record(args)
        v, leaves = self.variant(args)
        if v is None:
            if self._dynamo is None:
                self._dynamo = torch.compile(self.fn, fullgraph=True, dynamic=False)
            return self._dynamo(*args)
        return pytree.tree_unflatten(v.run(leaves), v.out_spec)

    def fold(
        self, args: tuple, carry: tuple[int, ...], x_arg: int, xs: list, y_out: int, dim: int = 0
    ) -> tuple[tuple, Any]:
        """:func:`fold` of this function: the same as its Python loop of calls (and it is that
        loop for CUDA inputs), without building the trees between calls: leaves go from one
        call to the next."""
        first = tuple(xs[0] if i == x_arg else a for i, a in enumerate(args))
        if _recording is not None:  # one call stands for all: later calls have its layout
            out = self._record(first)
            leaves = []
            spec = pytree.tree_structure(out[y_out])
            _flatten(out[y_out], leaves)
            return out, _stack([leaves] * len(xs), spec, dim)
        v, leaves = self.variant(first)
        plan = None if v is None else v.fold_plan(carry, x_arg, y_out)
        if plan is None:
            return _fold_loop(self, args, carry, x_arg, xs, y_out, dim)
        feed, (x_lo, x_hi), (y_lo, y_hi) = plan
        run, cur, per_call = v.run, leaves, []
        for x in xs:
            if x_hi - x_lo == 1 and isinstance(x, torch.Tensor):
                cur[x_lo] = x
            else:
                x_leaves: list = []
                _flatten(x, x_leaves)
                cur[x_lo:x_hi] = x_leaves
            out = run(cur)
            for i, o in feed:
                cur[i] = out[o]
            per_call.append(out[y_lo:y_hi])
        outs = pytree.tree_unflatten(out, v.out_spec)
        return outs, _stack(per_call, v.out_spec.child(y_out), dim)


def fold(
    fn: Callable,
    args: tuple,
    carry: tuple[int, ...],
    x_arg: int,
    xs: list,
    y_out: int,
    dim: int = 0,
) -> tuple[tuple, Any]:
    """``len(xs)`` calls of ``fn``, each on ``args`` with ``args[x_arg] = xs[i]`` and, for
    ``j`` in ``carry``, ``args[j]`` = output ``j`` of the previous call (``fn`` returns a
    tuple). Returns ``(outputs, ys)``: the last call's outputs, and every call's output
    ``y_out`` stacked along ``dim`` (leaf by leaf). The collector's T env steps and the
    update's minibatch steps are such folds.

    An :class:`Aot` function folds leaf to leaf (:meth:`Aot.fold`); any other function (eager,
    or ``torch.compile``'d) is the Python loop of calls."""
    if isinstance(fn, Aot):
        return fn.fold(args, carry, x_arg, xs, y_out, dim)
    return _fold_loop(fn, args, carry, x_arg, xs, y_out, dim)


def _fold_loop(
    fn: Callable, args: tuple, carry: tuple, x_arg: int, xs: list, y_out: int, dim: int
) -> tuple[tuple, Any]:
    per_call = []
    for x in xs:
        out = fn(*(x if i == x_arg else a for i, a in enumerate(args)))
        args = tuple(out[i] if i in carry else a for i, a in enumerate(args))
        leaves: list = []
        _flatten(out[y_out], leaves)  # tensors only (a rollout's are many: pytree is slower)
        per_call.append(leaves)
    y_spec = pytree.tree_structure(out[y_out])
    if y_spec.num_leaves != len(per_call[-1]):
        raise TypeError("tdppo.jit.fold stacks tensors only; an output to stack holds others")
    return out, _stack(per_call, y_spec, dim)


def _stack(per_call: list[list[torch.Tensor]], spec: Any, dim: int) -> Any:
    return pytree.tree_unflatten([torch.stack(col, dim) for col in zip(*per_call)], spec)


def _flatten(tree: Any, leaves: list) -> tuple:
    """Appends ``tree``'s tensors to ``leaves`` (pytree's order) and returns its structure; any
    leaf that is not a tensor (an int, None) is part of the structure, so traced as a constant."""
    if isinstance(tree, torch.Tensor):
        leaves.append(tree)
        return ()
    if type(tree) is dict:
        return ("d", tuple(tree), tuple(_flatten(v, leaves) for v in tree.values()))
    if type(tree) in (tuple, list):
        return (type(tree).__name__, tuple(_flatten(v, leaves) for v in tree))
    if isinstance(tree, (int, float, bool, str, type(None))):
        return ("c", type(tree).__name__, tree)
    raise TypeError(f"tdppo.jit.Aot takes dicts, lists, tuples and tensors, not {type(tree)}")


def _inputs(args: tuple) -> tuple[list, Any, list[int]]:
    """pytree's leaves of ``args``, their tree, and which leaves are tensors (runner inputs)."""
    full, in_spec = pytree.tree_flatten(args)
    return full, in_spec, [i for i, x in enumerate(full) if isinstance(x, torch.Tensor)]


def _layout(leaves: list) -> list:
    return [(t.shape, t.dtype, t.stride(), t.device, t.requires_grad) for t in leaves]


class _Variant:
    """One input layout of an :class:`Aot` function: its package's runner and output tree."""

    def __init__(self, runner: Any, in_spec: Any, tensor_pos: list, out_spec: Any, path: Path):
        self.runner, self.in_spec, self.out_spec, self.path = runner, in_spec, out_spec, path
        self.tensor_pos = tensor_pos  # which of pytree's input leaves are tensors (runner inputs)
        self.run: Callable[[list], list] = runner.run
        self._plans: dict[tuple, Any] = {}

    def fold_plan(self, carry: tuple[int, ...], x_arg: int, y_out: int) -> Any:
        """For :meth:`Aot.fold`: ``(feed, x leaves' span, y leaves' span)``, ``feed`` pairs
        (input leaf, output leaf); ``None`` when a carried output's tree is not its input's."""
        k = (carry, x_arg, y_out)
        if k not in self._plans:
            self._plans[k] = _fold_plan(self, carry, x_arg, y_out)
        return self._plans[k]

    @classmethod
    def indexed(cls, recipe: str | None, args: tuple) -> _Variant | None:
        """The variant that the index holds for ``recipe`` (:meth:`Aot._recipe`), its package
        loaded, or ``None`` (no entry, or its package is gone or will not load)."""
        if recipe is None:
            return None
        try:
            entry = json.loads((cache_dir() / "aot" / "index" / f"{recipe}.json").read_text())
            out_spec = pytree.treespec_loads(entry["out_spec"])
            path = cache_dir() / "aot" / f"{entry['package']}.pt2"
        except (OSError, ValueError, KeyError, TypeError):
            return None
        runner = _load(path)
        if runner is None:
            return None
        _, in_spec, tensor_pos = _inputs(args)
        return cls(runner, in_spec, tensor_pos, out_spec, path)

    @classmethod
    def build(
        cls, fn: Callable, args: tuple, leaves: list, traced: _Traced | None = None
    ) -> _Variant:
        """Trace ``fn`` (unless ``traced``), then load its package, compiling it if missing."""
        t = traced or _Traced.of(fn, args, leaves)
        runner = _load(t.path)
        if runner is None:
            _compile_once(t.gm, leaves, t.path)
            runner = _load(t.path)
            if runner is None:
                raise RuntimeError(
                    f"tdppo.jit: the package it just compiled will not load: {t.path}"
                )
        return cls(runner, t.in_spec, t.tensor_pos, t.out_spec, t.path)


class _Traced:
    """``make_fx``'s aten graph of one input layout of a function, and its package's path."""

    def __init__(self, gm, in_spec, tensor_pos, out_spec, path: Path):
        self.gm, self.in_spec, self.tensor_pos, self.out_spec, self.path = (
            gm, in_spec, tensor_pos, out_spec, path)  # fmt: skip

    @classmethod
    def of(cls, fn: Callable, args: tuple, leaves: list) -> _Traced:
        from torch.fx.experimental.proxy_tensor import make_fx

        full, in_spec, tensor_pos = _inputs(args)
        out_specs: list = []

        def flat_fn(*flat):
            for i, t in zip(tensor_pos, flat):  # constants (ints, say) stay where they were
                full[i] = t
            out = fn(*pytree.tree_unflatten(full, in_spec))
            out_leaves, out_spec = pytree.tree_flatten(out)
            out_specs.append(out_spec)
            return tuple(out_leaves)

        with torch.no_grad():
            gm = make_fx(flat_fn, decomposition_table=_LOWERINGS, tracing_mode="fake")(*leaves)
        path = cache_dir() / "aot" / f"{_key(gm, leaves)}.pt2"
        return cls(gm, in_spec, tensor_pos, out_specs[-1], path)


_ahead: tuple[Callable, tuple] | None = None  # compile_ahead's dry run, until it has run
_recording: dict | None = None  # during the dry run: (Aot, layout) -> (Aot, fake inputs)


@contextlib.contextmanager
def compile_ahead(fn: Callable, *args: Any):
    """A context in which the first :class:`Aot` call whose package is missing first runs
    ``fn(*args)`` once on fake tensors (``FakeTensorMode``: layouts, no arithmetic), a dry run
    in which every :class:`Aot` call only notes its input layout; then every noted variant is
    traced, and the packages missing among them are compiled at the same time, one process
    each (forked, up to the number of CPUs), before the call goes on. On a cold cache the
    driver's env step and minibatch step then compile side by side instead of one after the
    other; on a warm one nothing extra runs.

    ``fn`` must be pure and free of host syncs (it runs on fake tensors). If the dry run fails,
    variants are built one by one as calls meet them, as outside this context.
    """
    global _ahead
    before, _ahead = _ahead, (fn, args)
    try:
        yield
    finally:
        _ahead = before


def _run_ahead(aot: Aot, layout: tuple, traced: _Traced) -> None:
    """The dry run, then every variant it noted built, the missing packages compiled side by
    side; ``aot``'s variant for ``layout`` (the call that found its package missing) is
    already ``traced``."""
    global _ahead
    (fn, args), _ahead = _ahead, None  # one dry run per context
    probe = _probe_isa_aside()
    try:
        _build_ahead(aot, layout, traced, fn, args)
    finally:
        if probe is not None:
            os.waitpid(probe, 0)


def _probe_isa_aside() -> int | None:
    """A forked process that runs, while this one traces, the vector-ISA probes inductor still
    runs with the ISAs taken on trust (:data:`_TRUST_ISA`: AVX-512 bfloat16 and VNNI, a g++
    compile each, ~2 s together). Their results are files in the compile cache, which the
    compiles then find built. ``None`` where it does not apply (no fork, or the user's own
    ``TORCHINDUCTOR_VEC_ISA_OK``)."""
    from torch._inductor import config as inductor_config

    if not hasattr(os, "fork") or inductor_config.cpp.vec_isa_ok is not None:
        return None
    from torch._inductor import cpu_vec_isa

    def probe() -> None:
        with inductor_config.patch(_TRUST_ISA):
            cpu_vec_isa.pick_vec_isa()

    _before_fork()
    return _forked(probe)


def _forked(work: Callable[[], object]) -> int:
    """The pid of a forked child that runs ``work()`` and leaves by ``os._exit`` (0 when it
    returned, 1 when it raised), without Python's exit handlers."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def _build_ahead(aot: Aot, layout: tuple, traced: _Traced, fn: Callable, args: tuple) -> None:
    """:func:`_run_ahead`'s work: ``fn(*args)`` dry, then the variants it met built."""
    jobs = []
    for other, fake_args in _dry_run(fn, args):  # real inputs of the same layout (any values)
        real = pytree.tree_map_only(torch.Tensor, _real_like, fake_args)
        leaves: list = []
        lay = (_flatten(real, leaves), *_layout(leaves))
        if lay in other._variants:
            continue
        t = traced if other is aot and lay == layout else _Traced.of(other.fn, real, leaves)
        jobs.append((other, lay, real, leaves, t))
    _compile_all([(t.gm, leaves, t.path) for *_, leaves, t in jobs if not t.path.exists()])
    for other, lay, real, leaves, t in jobs:
        other._built(lay, real, leaves, t)


def _before_fork() -> None:
    """tqdm makes its multiprocessing lock (a named semaphore) on first use, which export does
    in a child; made there, the child's ``os._exit`` leaves it to the resource tracker, which
    then warns of a leak. Made here, the children share this process's lock."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    tqdm.get_lock()


def _dry_run(fn: Callable, args: tuple) -> list[tuple[Aot, tuple]]:
    """``fn(*args)`` on fake tensors; what each :class:`Aot` call met: ``(function, fake
    inputs)``, one per input layout. Empty if ``fn`` cannot run on fake tensors (a host
    sync, say): an optimization only, so variants are then built as calls meet them."""
    global _recording
    from torch._subclasses.fake_tensor import FakeTensorMode

    _recording = {}
    try:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake = pytree.tree_map_only(torch.Tensor, mode.from_tensor, args)
        with mode:
            fn(*fake)
        return list(_recording.values())
    except Exception:
        return []
    finally:
        _recording = None


def _real_like(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu").zero_()
    return out.requires_grad_() if t.requires_grad else out


def _compile_all(jobs: list) -> None:
    """Compile packages side by side: forked processes for all but the first, which this one
    compiles. A child that fails leaves its package missing; the call that needs it compiles
    it then (one by one, as outside :func:`compile_ahead`)."""
    workers = min(len(jobs), len(os.sched_getaffinity(0)))
    if workers > 1:
        _before_fork()
    pids = [_forked(functools.partial(_compile_once, *job)) for job in jobs[1:workers]]
    for gm, leaves, path in jobs[:1] + jobs[workers:]:
        _compile_once(gm, leaves, path)
    for pid in pids:
        os.waitpid(pid, 0)


def _fold_plan(v: _Variant, carry: tuple, x_arg: int, y_out: int) -> Any:
    """Leaves matched by their path in the tree (so a carried dict may come back in another key
    order); ``None`` when a carried output's paths are not its input's. Input indices count the
    runner's inputs (tensors only)."""
    runner_index = {full: i for i, full in enumerate(v.tensor_pos)}

    def paths(spec: Any) -> dict:
        dummy = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        return {path: i for path, i in pytree.tree_flatten_with_path(dummy)[0]}

    def span(spec: Any, j: int) -> tuple[int, int]:
        lo = sum(spec.child(i).num_leaves for i in range(j))
        return lo, lo + spec.child(j).num_leaves

    if v.in_spec.type is not tuple or v.out_spec.type is not tuple:
        return None
    ins = {p: runner_index[i] for p, i in paths(v.in_spec).items() if i in runner_index}
    outs = paths(v.out_spec)
    feed = []
    for j in carry:
        i_paths = {p: i for p, i in ins.items() if p[0].idx == j}
        o_paths = {p: o for p, o in outs.items() if p[0].idx == j}
        if i_paths.keys() != o_paths.keys():
            return None
        feed += [(i, o_paths[p]) for p, i in i_paths.items()]
    lo, hi = span(v.in_spec, x_arg)
    x_runner = [runner_index.get(i) for i in range(lo, hi)]
    if None in x_runner:  # constants in the folded argument: not foldable leaf to leaf
        return None
    x_span = (x_runner[0], x_runner[-1] + 1) if x_runner else (0, 0)
    return feed, x_span, span(v.out_spec, y_out)


def _index_put(recipe: str | None, v: _Variant) -> None:
    """Index ``v``'s package and output tree under ``recipe``: ``aot/index/<recipe>.json``,
    written whole (a temporary file renamed into place)."""
    if recipe is None:
        return
    try:
        entry = json.dumps({"package": v.path.stem, "out_spec": pytree.treespec_dumps(v.out_spec)})
    except Exception:  # an output tree pytree cannot write: later processes trace it again
        return
    folder = cache_dir() / "aot" / "index"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(entry)
        os.replace(tmp, folder / f"{recipe}.json")
    except OSError:  # a read-only (shared) cache: the packages still load, after tracing
        return


def _isa() -> tuple[str, str]:
    """The CPU's architecture and vector ISA as ATen reads it (cheap, where inductor's own
    ``pick_vec_isa`` costs ~0.9 s per process)."""
    return platform.machine(), torch.backends.cpu.get_cpu_capability()


def _key(gm: torch.fx.GraphModule, leaves: list) -> str:
    """What a package depends on: the traced graph (code and constants), the input layout, and
    the compiler's world (torch, python, threads, the CPU's architecture and vector ISA as ATen
    reads it (cheap, where inductor's own ``pick_vec_isa`` costs ~0.9 s per process), this
    module's format)."""
    h = hashlib.sha256()
    world = (AOT_FORMAT, torch.__version__, sys.version_info[:2], torch.get_num_threads(), _isa(),
             _layout(leaves))  # fmt: skip
    h.update(repr(world).encode())
    h.update(gm.code.encode())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            t = getattr(gm, node.target)
            h.update(f"{node.target}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:40]


@contextlib.contextmanager
def _compiling(path: Path):
    """An exclusive advisory lock (``flock``) on ``<package>.lock``: processes that meet the same
    missing package (a population sweep launched twice, several torchrun ranks, test workers)
    compile it once; the others wait and load it. The kernel drops the lock if its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile_once(gm: torch.fx.GraphModule, leaves: list, path: Path) -> None:
    """Compile the package unless a loadable one is there once the lock is held (another
    process may have compiled it while this one waited)."""
    with _compiling(path):
        if _load(path) is None:
            _compile_package(gm, leaves, path)


def _load(path: Path) -> Any:
    """The package's C++ runner, or ``None`` when it is absent (or unreadable: compiled anew).

    The loader is built directly: ``torch._inductor.aoti_load_package`` first compares the
    package's CPU ISA with inductor's ``pick_vec_isa()``, whose probes (compiled test programs
    run in subprocesses) cost ~0.9 s per process, only to log a mismatch; the ISA is already
    part of the package's key."""
    if not path.exists():
        return None
    try:
        return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except Exception:  # a package torch cannot read (another torch build): replace it
        return None


class _Graph(torch.nn.Module):
    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *flat):
        return self.gm(*flat)


def _forget_isa_verdicts() -> None:
    """Drop inductor's memo of which vector ISAs work (taken on trust by a failed try), so the
    next compile probes them."""
    from torch._inductor import cpu_vec_isa

    cpu_vec_isa.valid_vec_isa_list.cache_clear()
    for isa in cpu_vec_isa.supported_vec_isa_list:
        verdict = type(isa).__dict__.get("__bool__")
        if hasattr(verdict, "cache_clear"):
            verdict.cache_clear()


def _compile_package(gm: torch.fx.GraphModule, leaves: list, path: Path) -> None:
    """AOTInductor's package for ``gm``, written to a temporary file and renamed into place
    (a crash leaves no partial package; concurrent processes each write a whole one)."""
    from torch._inductor import config as inductor_config

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        ep = torch.export.export(_Graph(gm), tuple(leaves), strict=False)
    fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
    os.close(fd)
    tries = [_INDUCTOR]
    if inductor_config.cpp.vec_isa_ok is None:  # the user left inductor to probe
        tries.insert(0, {**_INDUCTOR, **_TRUST_ISA})
    known = inductor_config.get_config_copy()  # an option this torch lacks would fail the compile
    tries = [{k: v for k, v in options.items() if k in known} for options in tries]
    try:
        with warnings.catch_warnings():  # torch's own deprecation notices, not the user's
            warnings.simplefilter("ignore", FutureWarning)
            for i, options in enumerate(tries):
                try:
                    torch._inductor.aoti_compile_and_package(
                        ep, package_path=tmp, inductor_configs=options
                    )
                    break
                except Exception:
                    if i == len(tries) - 1:
                        raise
                    _forget_isa_verdicts()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    """Whether ``fn`` (from :func:`compiled`), once called, runs compiled code: an :class:`Aot`
    package, or a dynamo graph (:func:`captured_dynamo`)."""
    if isinstance(fn, Aot):
        return fn.loaded or fn._dynamo is not None and captured_dynamo(fn._dynamo, fn.fn.__code__)
    code = getattr(fn, "__tdppo_code__", None)
    if code is None:
        return False
    return captured_dynamo(fn, code)


def captured_dynamo(fn: Callable, code: Any) -> bool:
    """Whether dynamo's cache holds a graph for ``code``: an entry whose bytecode calls a
    ``__compiled_fn`` ran a captured graph; none means ``fn`` runs eagerly."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    for entry in _debug_get_cache_entry_list(code):
        if any(name.startswith("__compiled_fn") for name in entry.code.co_names):
            return True
    return False


def guards_checked(checked: bool):
    """A context in which compiled functions check their inputs' layout (``checked``), or only
    what tells their compiled variants apart: for :class:`Aot` functions the tree structure,
    for torch.compile'd ones dynamo's diff guards (``torch.compiler.set_stance``'s
    ``skip_guard_eval_unsafe``).

    The driver checks every guard in its first iteration, which compiles (or loads) each variant
    the step meets, and skips them afterwards: each later iteration calls the same compiled
    functions on inputs of the same structure, shapes, dtypes and strides (the state is updated
    in place), so the checks can only pass again. Anything else compiled (evaluation, a user's
    own code) runs outside this context, guards checked.
    """
    if checked:
        return contextlib.nullcontext()
    return _trusting()


@contextlib.contextmanager
def _trusting():
    global _checking
    before, _checking = _checking, False
    try:
        # without dynamo imported (tdppo.lazy_dynamo) nothing was torch.compile'd: no guards
        stance = (
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
            if lazy_dynamo.loaded()
            else contextlib.nullcontext()
        )
        with stance:
            yield
    finally:
        _checking = before
