"""A content fingerprint of a Python function and of everything it closes over, computed by
reading it, not running it: what :class:`tdppo.jit.Aot` keys a traced graph on before tracing,
so that a warm process loads its compiled package without ``make_fx`` (~0.5 s per process).

:func:`fingerprint` walks the object and hashes what it finds:

- values (``None``, numbers, strings, bytes, torch dtypes, devices and sizes, enum members):
  their repr; tuples, lists and dicts (in order): their items; tensors: type, shape, dtype,
  strides, device, ``requires_grad`` and every byte;
- functions defined outside the pinned libraries (tdppo's own, a user's): bytecode and
  constants (nested code too), defaults, closure cells, and every global its code names; for a
  module global (``nets`` in ``nets.value(...)``), the module's attributes that the code names,
  as they are now, so a monkeypatched function changes the fingerprint;
- classes defined outside the pinned libraries: their bases and the functions and plain values
  of their ``__dict__``; other objects: their class, then their ``__dict__`` and slots;
- anything defined in a pinned library (:data:`PINNED`: torch, tensordict, TorchRL, numpy,
  gymnasium, the standard library): its module, name and the library's version, not its code.

It returns ``None`` when it meets anything it cannot describe by value (a lock, a process group,
a numpy array, an object implemented in C): the caller then traces, as without a fingerprint.
What the walk cannot see: a pinned library changed without a new version, and global settings
read while tracing (the caller adds the ones that matter to its key).
"""

from __future__ import annotations

import collections
import enum
import functools
import hashlib
import sys
import types
from typing import Any

import torch

__all__ = ["fingerprint", "PINNED"]

PINNED = frozenset({"torch", "tensordict", "torchrl", "numpy", "gymnasium", "builtins"})
"""Top-level packages whose code is identified by their version (the project pins them); the
standard library by Python's."""

_SKIPPED_DUNDERS = frozenset({"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"})


class _Unsupported(Exception):
    pass


def fingerprint(obj: Any) -> str | None:
    """A hex digest of ``obj`` (see the module docstring), or ``None`` when part of it cannot be
    described by value."""
    walk = _Walk()
    try:
        walk.feed(obj)
    except (_Unsupported, RecursionError):
        return None
    return walk.h.hexdigest()


@functools.cache
def _version(top: str) -> str | None:
    """The version that identifies the code of top-level module ``top``; ``None`` when its code
    must be read instead."""
    if top in sys.stdlib_module_names:
        return sys.version
    if top not in PINNED:
        return None
    mod = sys.modules.get(top)
    return str(getattr(mod, "__version__", None) or "unknown")


def _pinned(module: str | None) -> str | None:
    return _version((module or "builtins").split(".")[0])


class _Walk:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.seen: dict[int, int] = {}  # id -> order of first visit (stable across processes)
        self.alive: list = []  # keeps what was visited alive, so that no id is reused

    def tag(self, *parts: Any) -> None:
        self.h.update(repr(parts).encode())
        self.h.update(b"\0")

    def feed(self, obj: Any) -> None:
        t = type(obj)
        if obj is None or t in (bool, int, float, complex, str, bytes, type(Ellipsis)):
            return self.tag(t.__name__, obj)
        if isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
            return self.tag(t.__name__, str(obj))
        if isinstance(obj, enum.Enum):
            self.feed(t)
            return self.tag("member", obj.name)
        i = self.seen.get(id(obj))
        if i is not None:  # a cycle, or an object met before: its visit order
            return self.tag("ref", i)
        self.seen[id(obj)] = len(self.seen)
        self.alive.append(obj)
        if isinstance(obj, (tuple, list)):
            self.feed(t)
            self.tag(len(obj))
            for x in obj:
                self.feed(x)
        elif isinstance(obj, dict):
            self.feed(t)
            self.tag(len(obj))
            for k, v in obj.items():
                self.feed(k)
                self.feed(v)
        elif isinstance(obj, (set, frozenset)):
            if not all(type(x) in (bool, int, float, str, bytes) for x in obj):
                raise _Unsupported(t)
            self.tag(t.__name__, sorted(repr(x) for x in obj))
        elif isinstance(obj, torch.Tensor):
            self.tensor(obj)
        elif isinstance(obj, types.FunctionType):
            self.function(obj)
        elif isinstance(obj, type):
            self.cls(obj)
        elif isinstance(obj, types.MethodType):
            self.tag("method")
            self.feed(obj.__func__)
            self.feed(obj.__self__)
        elif isinstance(obj, functools.partial):
            self.tag("partial")
            self.feed((obj.func, obj.args, obj.keywords))
        elif isinstance(obj, (staticmethod, classmethod)):
            self.tag(t.__name__)
            self.feed(obj.__func__)
        elif isinstance(obj, property):
            self.tag("property")
            self.feed((obj.fget, obj.fset, obj.fdel))
        elif isinstance(obj, types.CodeType):
            self.code(obj)
        elif isinstance(obj, types.ModuleType):
            self.module(obj, ())
        elif callable(obj) and not hasattr(obj, "__dict__") and _pinned(_owner(obj)):
            # builtins and C functions of a pinned library (torch.tanh, Tensor.add, an op)
            self.tag("builtin", _owner(obj), getattr(obj, "__qualname__", None) or str(obj))
            owner = getattr(obj, "__self__", None)
            if owner is not None and not isinstance(owner, (types.ModuleType, type)):
                self.feed(owner)
        else:
            self.instance(obj)

    def tensor(self, x: torch.Tensor) -> None:
        if x.layout != torch.strided or type(x) not in (torch.Tensor, torch.nn.Parameter):
            raise _Unsupported(type(x))
        self.tag("tensor", type(x).__name__, tuple(x.shape), str(x.dtype), x.stride(),
                 x.device.type, x.requires_grad)  # fmt: skip
        if x.device.type == "meta":
            return
        data = x.detach().cpu().contiguous().reshape(-1)
        self.h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")

    def function(self, fn: types.FunctionType) -> None:
        version = _pinned(fn.__module__)
        if version is not None:
            return self.tag("function", fn.__module__, fn.__qualname__, version)
        self.tag("function", fn.__module__, fn.__qualname__)
        self.code(fn.__code__)
        self.feed((fn.__defaults__, fn.__kwdefaults__))
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell (a name assigned later in the enclosing scope)
                cells.append(_EMPTY)
        self.feed(tuple(cells))
        names = _names(fn.__code__)
        for name in sorted(names):  # the globals its code names, as they are now
            if name not in fn.__globals__:
                continue
            value = fn.__globals__[name]
            self.tag("global", name)
            if isinstance(value, types.ModuleType):
                self.module(value, names)
            else:
                self.feed(value)

    def module(self, mod: types.ModuleType, names: frozenset | tuple) -> None:
        """A module as code reads it: its version if pinned, else the attributes ``names``."""
        version = _pinned(mod.__name__)
        if version is not None:
            return self.tag("module", mod.__name__, version)
        if not names:  # a module held as a value: which of its attributes matter is unknown
            raise _Unsupported(mod)
        self.tag("module", mod.__name__)
        for name in sorted(names):
            if hasattr(mod, name):
                value = getattr(mod, name)
                self.tag("attribute", name)
                if isinstance(value, types.ModuleType):
                    if id(value) in self.seen:
                        self.tag("ref", self.seen[id(value)])
                        continue
                    self.seen[id(value)] = len(self.seen)
                    self.module(value, names)
                else:
                    self.feed(value)

    def code(self, co: types.CodeType) -> None:
        self.tag(
            "code", co.co_name, co.co_argcount, co.co_posonlyargcount, co.co_kwonlyargcount,
            co.co_flags, co.co_names, co.co_varnames, co.co_freevars, co.co_cellvars,
        )  # fmt: skip
        self.h.update(co.co_code)
        for const in co.co_consts:
            self.code(const) if isinstance(const, types.CodeType) else self.feed(const)

    def cls(self, t: type) -> None:  # reached through feed, which tags a class met before
        version = _pinned(t.__module__)
        if version is not None:
            return self.tag("class", t.__module__, t.__qualname__, version)
        self.tag("class", t.__module__, t.__qualname__)
        self.feed(t.__bases__)
        for name, value in t.__dict__.items():
            if (
                name in _SKIPPED_DUNDERS
                or (name.startswith("__") and name.endswith("__") and not callable(value))
                or type(value) is _FIELD_GETTER  # a namedtuple's: its ``_fields`` say which
            ):
                continue  # annotations, dataclass fields, slots: the instance holds the values
            self.tag("attribute", name)
            self.feed(value)

    def instance(self, obj: Any) -> None:
        t = type(obj)
        for base in t.__mro__[:-1]:  # every class but object is written in Python
            if base.__module__ == "builtins" or not _python_module(base.__module__):
                raise _Unsupported(t)
        self.feed(t)
        state = getattr(obj, "__dict__", None)
        slots = [s for base in t.__mro__ for s in getattr(base, "__slots__", ())]
        if state is None and not slots:
            raise _Unsupported(t)
        self.feed(dict(state or {}))
        for s in slots:
            if s not in ("__dict__", "__weakref__") and hasattr(obj, s):
                self.tag("slot", s)
                self.feed(getattr(obj, s))


_EMPTY = ("<empty cell>",)
_FIELD_GETTER = type(collections.namedtuple("_Pair", "a b").a)


def _owner(obj: Any) -> str | None:
    mod = getattr(obj, "__module__", None)
    if mod is None:
        objclass = getattr(obj, "__objclass__", None) or type(getattr(obj, "__self__", None))
        mod = getattr(objclass, "__module__", None)
    return mod


@functools.cache
def _python_module(name: str) -> bool:
    """Whether module ``name`` is Python source (a C extension's objects keep state in C)."""
    mod = sys.modules.get(name)
    return str(getattr(mod, "__file__", "") or "").endswith(".py")


def _names(co: types.CodeType) -> frozenset:
    """The global and attribute names a code object (and the code nested in it) reads."""
    names = set(co.co_names)
    for const in co.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return frozenset(names)
