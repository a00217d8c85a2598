"""``tdppo.jit.Aot``: functions traced by make_fx and compiled ahead of time into AOTInductor
packages kept on disk. Compared with the same function run eagerly (the reference), and with a
Python loop of calls (for ``fold``); packages are spied on to show what compiles and what loads."""

from __future__ import annotations

import pytest
import torch

from tdppo import jit

# one worker runs this file's tests in order, so they share the package the first compiles
pytestmark = [pytest.mark.compile, pytest.mark.xdist_group("aot")]


def _step(carry, params, x, n):
    """A small pure step over nested dicts, with a None leaf and an int constant."""
    h = torch.tanh(carry["h"] @ params["w"] + params["b"]["v"] + x)
    out = {"h": h, "count": carry["count"] + n, "none": None}
    return out, {"y": h.sum(-1), "z": {"h2": h * 2}}


def _inputs():
    g = torch.Generator().manual_seed(0)
    carry = {"h": torch.randn(4, 3, generator=g), "count": torch.zeros((), dtype=torch.int64),
             "none": None}  # fmt: skip
    params = {"w": torch.randn(3, 3, generator=g), "b": {"v": torch.randn(3, generator=g)}}
    xs = [torch.randn(4, 3, generator=g) for _ in range(5)]
    return carry, params, xs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One package folder for this file's tests (a user's own TORCHINDUCTOR_CACHE_DIR wins)."""
    path = tmp_path_factory.mktemp("aot-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(path))
        yield path


@pytest.fixture
def cache(folder, monkeypatch):
    compiles = []
    real = jit._compile_package
    monkeypatch.setattr(jit, "_compile_package", lambda gm, lv, path: compiles.append(path)
                        or real(gm, lv, path))  # fmt: skip
    return folder, compiles


def _assert_trees_close(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_trees_close(a[k], b[k])
    elif a is None:
        assert b is None
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _tensors(tree):
    return [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def test_equals_eager_then_a_new_process_loads_the_package(cache):
    folder, compiles = cache
    carry, params, xs = _inputs()
    fn = jit.compiled(_step)
    assert isinstance(fn, jit.Aot) and not jit.captured(fn)
    got = fn(carry, params, xs[0], 3)
    _assert_trees_close(got, _step(carry, params, xs[0], 3))
    (v,) = fn._variants.values()
    assert jit.captured(fn) and v.path.parent == folder / "aot" and v.path.exists()
    assert compiles in ([], [v.path])  # compiled here, or by an earlier test of this file
    # another Aot of the same function (what a new process builds) traces, finds, loads
    n = len(compiles)
    again = jit.compiled(_step)
    out = again(carry, params, xs[0], 3)
    assert len(compiles) == n
    for a, b in zip(_tensors(out), _tensors(got), strict=True):
        assert torch.equal(a, b)  # the same package: the same bits


def test_a_new_layout_or_constant_is_a_new_variant_and_changed_code_a_new_package(cache):
    _, compiles = cache
    carry, params, xs = _inputs()
    fn = jit.compiled(_step)
    fn(carry, params, xs[0], 3)  # compiled here or loaded (an earlier test compiled it)
    n = len(compiles)
    fn(carry, params, xs[1], 3)  # other values, same layout: no new variant
    assert len(fn._variants) == 1
    out = fn(carry, params, xs[0], 4)  # another Python constant: traced into another graph
    assert int(out[0]["count"]) == 4 and len(fn._variants) == 2
    wide = {**carry, "h": torch.randn(6, 3)}
    out = fn(wide, params, torch.zeros(6, 3), 3)  # another shape
    _assert_trees_close(out, _step(wide, params, torch.zeros(6, 3), 3))
    assert len(fn._variants) == 3 and len(compiles) == n + 2

    def changed(carry, params, x, n):  # the same signature, other code
        out, ys = _step(carry, params, x, n)
        return {**out, "h": out["h"] + 1}, ys

    fn2 = jit.compiled(changed)
    _assert_trees_close(fn2(carry, params, xs[0], 3), changed(carry, params, xs[0], 3))
    assert len(compiles) == n + 3 and len(set(compiles)) == len(compiles)


def test_fold_is_the_loop_of_calls_bit_for_bit(cache):
    carry, params, xs = _inputs()
    fn = jit.compiled(_step)
    c, ys = carry, []
    for x in xs:
        c, y = fn(c, params, x, 3)
        ys.append(y)
    (c_fold, _), ys_fold = fn.fold((carry, params, None, 3), (0,), 2, xs, 1, dim=0)
    assert torch.equal(c_fold["h"], c["h"]) and int(c_fold["count"]) == 3 * len(xs)
    assert torch.equal(ys_fold["y"], torch.stack([y["y"] for y in ys]))
    assert torch.equal(ys_fold["z"]["h2"], torch.stack([y["z"]["h2"] for y in ys]))
    # a carried dict whose keys come back in another order is matched by path, not position
    reordered = {"count": carry["count"], "h": carry["h"], "none": None}
    (c2, _), _ = fn.fold((reordered, params, None, 3), (0,), 2, xs, 1)
    assert torch.equal(c2["h"], c["h"])


def test_an_unreadable_package_is_compiled_again(cache):
    folder, compiles = cache
    carry, params, xs = _inputs()
    fn = jit.compiled(_step)
    fn(carry, params, xs[0], 3)
    (path,) = [v.path for v in fn._variants.values()]
    path.write_bytes(b"not a package")
    n = len(compiles)
    out = jit.compiled(_step)(carry, params, xs[0], 3)
    _assert_trees_close(out, _step(carry, params, xs[0], 3))
    assert compiles[n:] == [path]
