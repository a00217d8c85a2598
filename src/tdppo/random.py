"""Counter-based random numbers: JAX-style keys over int64 tensors, on any device.

Every draw is a pure function of ``(key, counter, element index)``. Nothing is consumed, so
a draw does not depend on which code path asked for it, in which order, on which device, or
whether it ran eagerly, compiled or under ``torch.vmap``; exact resume then needs only the
keys and the counters that already live in the training state. (``torch.Generator`` offers
none of that: it graph-breaks under ``torch.compile``, cannot be vmapped, and its stream
depends on the order of draws.)

The mixing function is the 32-bit PCG hash (O'Neill 2014, "RXS-M-XS" output), applied in
int64 arithmetic so that products never overflow. Keys are int64 tensors holding a 32-bit
value; any leading batch shape (members of a population, say) broadcasts.

>>> import torch
>>> from tdppo import random as tr
>>> key = tr.key(0)
>>> u = tr.uniform(tr.fold_in(key, 7), (4, 3))
>>> bool(((u >= 0) & (u < 1)).all())
True
"""

from __future__ import annotations

import torch

__all__ = ["key", "fold_in", "bits", "uniform", "normal", "gumbel", "permutation"]

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _pcg(x: torch.Tensor) -> torch.Tensor:
    """PCG hash of uint32 values held in int64 (all products stay below 2**63)."""
    state = (x * 747796405 + 2891336453) & _MASK32
    shift = (state >> 28) + 4
    word = (((state >> shift) ^ state) * 277803737) & _MASK32
    return ((word >> 22) ^ word) & _MASK32


def _as_i64(x: torch.Tensor | int, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(torch.int64)
    return torch.as_tensor(int(x), dtype=torch.int64, device=device)


def key(seed: int | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A root key (int64 tensor holding 32 bits) from an integer seed of up to 64 bits."""
    s = _as_i64(seed, torch.device(device) if device is not None else None)
    lo = s & _MASK32
    hi = (s >> 32) & _MASK32
    return _pcg(_pcg(lo ^ _GOLDEN) ^ hi)


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key from ``k`` and an integer or int tensor (broadcast); ``jax.random.fold_in``."""
    d = _as_i64(data, k.device)
    lo = d & _MASK32
    hi = (d >> 32) & _MASK32
    return _pcg(_pcg(k ^ lo) ^ (hi + _GOLDEN) & _MASK32)


def bits(k: torch.Tensor, shape: tuple[int, ...] | torch.Size, salt: int = 0) -> torch.Tensor:
    """Uniform 32-bit integers (int64 dtype) of ``k.shape + shape``; element ``i`` of the
    trailing block depends only on ``(k, i, salt)``."""
    shape = tuple(shape)
    n = 1
    for s in shape:
        n *= s
    idx = torch.arange(n, dtype=torch.int64, device=k.device).view(shape)
    kk = k.view(k.shape + (1,) * len(shape))
    return _pcg(_pcg(kk ^ ((idx * 2 + 1 + salt * 0x632BE5AB) & _MASK32)) ^ (idx >> 31))


def uniform(
    k: torch.Tensor, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform floats in ``[0, 1)`` of shape ``k.shape + shape``, with the full mantissa of
    ``dtype`` (24 bits for float32, 53 for float64)."""
    if dtype == torch.float64:
        a = bits(k, shape, salt=1) >> 5  # 27 bits
        b = bits(k, shape, salt=2) >> 6  # 26 bits
        return (a.to(torch.float64) * 67108864.0 + b.to(torch.float64)) * (2.0**-53)
    u = (bits(k, shape, salt=1) >> 8).to(torch.float32) * (2.0**-24)
    return u.to(dtype)


def normal(
    k: torch.Tensor, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal floats of shape ``k.shape + shape`` (Box-Muller)."""
    u1 = 1.0 - uniform(fold_in(k, 1), shape, dtype)  # in (0, 1]: log is finite
    u2 = uniform(fold_in(k, 2), shape, dtype)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * torch.pi) * u2)


def gumbel(
    k: torch.Tensor, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard Gumbel floats (``argmax(logits + gumbel)`` samples a Categorical)."""
    u = uniform(k, shape, torch.float64).clamp(min=1e-300)
    return (-torch.log(-torch.log(u))).to(dtype)


def permutation(k: torch.Tensor, n: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` for each key (argsort of random bits)."""
    return torch.argsort(bits(k, (n,), salt=3), dim=-1)
