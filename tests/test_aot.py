"""``tdppo.jit.Aot``: functions traced by make_fx and compiled ahead of time into AOTInductor
packages kept on disk. Compared with the same function run eagerly (the reference), and with a
Python loop of calls (for ``fold``); packages are spied on to show what compiles and what loads."""

from __future__ import annotations

import multiprocessing
import os
import time
import types

import numpy as np
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
    # another Aot of the same function (what a new process builds) finds the package through
    # the index (no tracing) and loads it
    n = len(compiles)
    again = jit.compiled(_step)
    traced = []
    real_trace = jit._Traced.of
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jit._Traced, "of", lambda *a: traced.append(a) or real_trace(*a))
        out = again(carry, params, xs[0], 3)
    assert len(compiles) == n and traced == []
    for a, b in zip(_tensors(out), _tensors(got), strict=True):
        assert torch.equal(a, b)  # the same package: the same bits


@pytest.fixture
def graphs(tmp_path, monkeypatch):
    """Packages without the C++ compiler (seconds each): a "package" is the traced graph, kept
    in memory and marked on disk, and its runner runs that graph in Python. What is tested is
    which layouts, constants and code make a new package; the compiled packages themselves are
    tested above and below."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    kept, compiles = {}, []

    def compile_package(gm, leaves, path):
        compiles.append(path)
        kept[path] = gm
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("traced graph")

    def load(path):
        gm = kept.get(path) if path.exists() else None
        return None if gm is None else types.SimpleNamespace(run=lambda flat: list(gm(*flat)))

    monkeypatch.setattr(jit, "_compile_package", compile_package)
    monkeypatch.setattr(jit, "_load", load)
    return compiles


def test_a_new_layout_or_constant_is_a_new_variant_and_changed_code_a_new_package(graphs):
    compiles = graphs
    carry, params, xs = _inputs()
    fn = jit.compiled(_step)
    fn(carry, params, xs[0], 3)
    n = len(compiles)
    assert n == 1
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


def _scaled(scale):
    def step(carry, params, x, n):
        out, ys = _step(carry, params, x, n)
        return {**out, "h": out["h"] * scale}, ys

    return step


def test_the_index_skips_tracing_only_for_the_same_code_and_values(graphs, monkeypatch):
    """A function met again (a new Aot, as in a new process) is found through its fingerprint's
    index entry without tracing; a closure value that differs, a package that is gone or an
    index entry that is damaged each trace again, and every result equals eager."""
    compiles = graphs
    carry, params, xs = _inputs()
    traced = []
    real_trace = jit._Traced.of
    monkeypatch.setattr(jit._Traced, "of", lambda *a: traced.append(a) or real_trace(*a))

    def run(scale):
        out = jit.compiled(_scaled(scale))(carry, params, xs[0], 3)
        _assert_trees_close(out, _scaled(scale)(carry, params, xs[0], 3))

    run(2.0)
    assert len(traced) == 1 and len(compiles) == 1
    run(2.0)  # the same code and values: from the index
    assert len(traced) == 1 and len(compiles) == 1
    run(3.0)  # another closure value: another graph
    assert len(traced) == 2 and len(compiles) == 2
    index = sorted((compiles[0].parent / "index").iterdir())
    assert len(index) == 2
    for entry in index:
        entry.write_text("{not json")
    run(2.0)  # a damaged entry: traced again; the package is still there, so no compile
    assert len(traced) == 3 and len(compiles) == 2
    compiles[0].unlink()
    compiles[1].unlink()
    run(2.0)  # the package is gone: traced and compiled again
    assert len(traced) == 4 and len(compiles) == 3


def test_an_index_that_cannot_be_written_only_costs_the_tracing(graphs, monkeypatch):
    """A read-only (shared) cache folder: the index entry is not written, the call still runs
    (and equals eager), and the next process traces again."""
    carry, params, xs = _inputs()

    def read_only(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(jit.tempfile, "mkstemp", read_only)
    for _ in range(2):
        out = jit.compiled(_scaled(5.0))(carry, params, xs[0], 3)
        _assert_trees_close(out, _scaled(5.0)(carry, params, xs[0], 3))
    assert len(graphs) == 1  # compiled once (the stub's package), traced twice
    assert not (graphs[0].parent / "index").exists() or not any(
        (graphs[0].parent / "index").iterdir()
    )


def _tanh_and_grad(x):
    return torch.tanh(x), torch.func.grad(lambda x: torch.tanh(x).sum())(x)


def test_packages_compute_tanh_within_2_ulp_of_float64_and_its_gradient_from_it(cache):
    """Packages lower aten.tanh to tdppo's own formula (jit._tanh, for speed): checked against
    numpy's float64 tanh over small, ordinary, large and special inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.linspace(-12, 12, 20001), torch.randn(20000, generator=g) * 2,
        torch.randn(20000, generator=g) * 1e-3, torch.randn(2000, generator=g) * 1e-30,
        torch.tensor([0.0, -0.0, 0.625, -0.625, 1e30, -1e30, float("inf"), -float("inf")]),
    ])  # fmt: skip
    fn = jit.compiled(_tanh_and_grad)
    y, dy = fn(x)
    assert len(fn._variants) == 1
    leaves: list = []
    jit._flatten((x,), leaves)
    gm = jit._Traced.of(_tanh_and_grad, (x,), leaves).gm
    assert torch.ops.aten.tanh.default not in {n.target for n in gm.graph.nodes}
    ref = np.tanh(x.double().numpy())
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    err = np.abs(y.double().numpy() - ref) / ulp
    assert err.max() <= 2.0, f"max {err.max():.2f} ulp at x = {x[int(err.argmax())]}"
    assert torch.equal(torch.signbit(y), torch.signbit(x))  # -0.0 stays -0.0
    assert np.abs(dy.double().numpy() - (1 - ref * ref)).max() <= 1e-6
    assert torch.isnan(fn(torch.full_like(x, float("nan")))[0]).all()


def _affine(x):
    return x * 3.0 - 1.0


def test_a_compile_that_fails_with_the_isa_taken_on_trust_is_tried_again_with_probes(
    cache, monkeypatch
):
    """Packages compile first with inductor's vector-ISA probes skipped (jit._TRUST_ISA); a
    failure then compiles again with inductor's memo of the ISAs forgotten, so it probes."""
    from torch._inductor import cpu_vec_isa

    real, tries = torch._inductor.aoti_compile_and_package, []

    def aoti(ep, package_path, inductor_configs):
        tries.append((inductor_configs.get("cpp.vec_isa_ok"),
                      cpu_vec_isa.valid_vec_isa_list.cache_info().currsize))  # fmt: skip
        if len(tries) == 1:
            cpu_vec_isa.valid_vec_isa_list()  # what a trusted try leaves memoized
            raise RuntimeError("g++: unrecognized command-line option '-mavx512f'")
        return real(ep, package_path=package_path, inductor_configs=inductor_configs)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", aoti)
    x = torch.randn(5)
    fn = jit.compiled(_affine)
    with torch._inductor.config.patch({"cpp.vec_isa_ok": None}):  # as when the user sets none
        assert torch.equal(fn(x), _affine(x))
    assert jit.captured(fn) and tries == [(True, tries[0][1]), (None, 0)]


def test_the_isa_probes_left_with_the_isa_on_trust_run_in_a_forked_process(tmp_path, monkeypatch):
    """jit._probe_isa_aside: while the compiling process traces, a child runs inductor's
    remaining probes (AVX-512 bfloat16, VNNI), whose compiled test programs land in the cache."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    jit._forget_isa_verdicts()  # as in a process that has not compiled yet
    with torch._inductor.config.patch({"cpp.vec_isa_ok": None}):
        pid = jit._probe_isa_aside()
    assert pid is not None
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    if torch.cpu._is_avx512_bf16_supported():
        assert list(tmp_path.rglob("*.so")), "no probe program compiled"
    with torch._inductor.config.patch({"cpp.vec_isa_ok": False}):  # the user's own setting
        assert jit._probe_isa_aside() is None


def _halved(x):
    return x * 0.5


def test_packages_leave_nothing_outside_the_cache_folder(cache, monkeypatch):
    """No precompiled header: inductor would build one (156 MB) under /tmp/torchinductor_<user>,
    outside the cache folder, costing a fresh machine's first compile ~6 s of g++."""
    import torch._inductor.codecache as codecache

    headers = []
    real = codecache._precompile_header
    monkeypatch.setattr(codecache, "_precompile_header",
                        lambda *a, **k: headers.append(a) or real(*a, **k))  # fmt: skip
    fn = jit.compiled(_halved)
    x = torch.randn(3)
    assert torch.equal(fn(x), _halved(x)) and jit.captured(fn)
    assert headers == []


def _negated(x):
    return -x


def test_an_option_this_torch_lacks_is_left_out_of_the_compile(cache, monkeypatch):
    """jit._INDUCTOR names options of this torch's inductor; a torch without one of them (an
    older or newer release) still compiles, without it."""
    monkeypatch.setattr(jit, "_INDUCTOR", {**jit._INDUCTOR, "an_option_no_torch_has": 1})
    fn = jit.compiled(_negated)
    x = torch.randn(3)
    assert torch.equal(fn(x), _negated(x)) and jit.captured(fn)


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


def _build_in_child(queue) -> None:
    carry, params, xs = _inputs()
    v, _ = jit.compiled(_step).variant((carry, params, xs[0], 3))
    queue.put(str(v.path))


def test_processes_that_meet_one_missing_package_compile_it_once(tmp_path, monkeypatch):
    """Two processes (forked) build the same missing package at once: the lock on it makes one
    compile while the other waits, then loads it. The compiler is a stub that takes a second."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    log = tmp_path / "compiles.log"

    def compile_package(gm, leaves, path):
        with open(log, "a") as f:
            f.write(f"{path}\n")
        time.sleep(1.0)  # both processes are past their first look by now
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("package")

    monkeypatch.setattr(jit, "_compile_package", compile_package)
    monkeypatch.setattr(jit, "_load", lambda path: types.SimpleNamespace(run=None)
                        if path.exists() else None)  # fmt: skip
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(queue,)) for _ in range(2)]
    for p in procs:
        p.start()
    paths = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert paths[0] == paths[1]
    assert log.read_text().splitlines() == [paths[0]]  # compiled once, loaded by the other


def _double(x):
    return {"y": x * 2 + 1}


def _chain(fn1, fn2, x):
    """Two compiled functions, the second on the first's output (as the env step's rollout
    feeds the minibatch step)."""
    return fn2(fn1(x)["y"].sum(0))


def test_compile_ahead_compiles_every_variant_of_a_dry_run_side_by_side(tmp_path, monkeypatch):
    """Inside ``compile_ahead``, the first call that needs a variant runs the given function on
    fake tensors; both functions' packages are then compiled in one batch, one of them in a
    forked process, before the first call goes on; the second function's first call finds its
    variant ready. Results equal eager. The compiler is a stub (a marker file, and the traced
    graph run in Python), so the processes are what is tested."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    log, graphs = tmp_path / "compiles.log", {}
    real_trace = jit._Traced.of

    def trace(fn, args, leaves):
        t = real_trace(fn, args, leaves)
        graphs[t.path] = t.gm
        return t

    def compile_package(gm, leaves, path):
        with open(log, "a") as f:
            f.write(f"{path} {os.getpid()}\n")
        time.sleep(0.5)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("package")

    def load(path):
        gm = graphs.get(path) if path.exists() else None
        return None if gm is None else types.SimpleNamespace(run=lambda flat: list(gm(*flat)))

    monkeypatch.setattr(jit._Traced, "of", trace)
    monkeypatch.setattr(jit, "_compile_package", compile_package)
    monkeypatch.setattr(jit, "_load", load)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # two CPUs, as on CI
    fn1, fn2 = jit.compiled(_double), jit.compiled(_step2)
    x = torch.randn(5, 4)
    seen = []
    real_call = jit.Aot.__call__

    def call(self, *args):  # what fn2 holds when its first real call starts
        if self is fn2 and jit._recording is None:
            seen.append(len(fn2._variants))
        return real_call(self, *args)

    monkeypatch.setattr(jit.Aot, "__call__", call)
    with jit.compile_ahead(_chain, fn1, fn2, x):
        out = _chain(fn1, fn2, x)
    _assert_trees_close(out, _chain(_double, _step2, x))
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 2 and {p for p, _ in lines} == {str(p) for p in graphs}  # each once
    assert len({pid for _, pid in lines}) == 2  # side by side: two processes
    assert seen == [1]  # fn2's variant was ready before its first real call


def _step2(h):
    return {"z": torch.tanh(h).cumsum(0)}


def test_a_dry_run_that_fails_leaves_calls_to_build_their_own(graphs):
    """A function with a host sync cannot run on fake tensors: compile_ahead's dry run fails
    quietly and each call builds its variant as outside the context."""
    fn1, fn2 = jit.compiled(_double), jit.compiled(_step2)
    x = torch.randn(5, 4)

    def syncing(fn1, fn2, x):
        if float(x.sum()) > 1e9:  # a host sync: no value on fake tensors
            return None
        return _chain(fn1, fn2, x)

    with jit.compile_ahead(syncing, fn1, fn2, x):
        out = syncing(fn1, fn2, x)
    _assert_trees_close(out, _chain(_double, _step2, x))
    assert len(graphs) == 2 and jit._ahead is None and jit._recording is None
