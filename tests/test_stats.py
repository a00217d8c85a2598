"""tdppo.stats against numpy float64 and gymnasium's RunningMeanStd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.wrappers.utils import RunningMeanStd
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tdppo import stats


def _empty(shape=()):
    """Statistics with count 0: merging data into it gives exactly the data's moments."""
    s = stats.init(shape)
    s["count"] = torch.zeros((), dtype=torch.float64)
    return s


def _np_pooled_with_prior(x: np.ndarray, prior_count: float = 1e-4):
    """numpy float64 reference for init() + data: the prior is a pseudo-sample of weight
    ``prior_count`` with mean 0 and variance 1 (gymnasium's RunningMeanStd initial state)."""
    n = x.shape[0]
    total = n + prior_count
    mean = x.sum(0) / total
    m2 = prior_count * (1.0 + mean**2) + ((x - mean) ** 2).sum(0)
    return mean, m2 / total, total


def _close(s, mean, var, count, rtol=1e-12, atol=0.0):
    np.testing.assert_allclose(s["mean"].numpy(), mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(s["var"].numpy(), var, rtol=rtol, atol=atol)
    np.testing.assert_allclose(s["count"].numpy(), count, rtol=0, atol=0)


def test_init_matches_gymnasium():
    ref = RunningMeanStd(shape=(2, 3))
    s = stats.init((2, 3))
    assert s.batch_size == torch.Size([])
    assert all(s[k].dtype == torch.float64 for k in ("mean", "var", "count"))
    _close(s, ref.mean, ref.var, ref.count, rtol=0)


@pytest.mark.parametrize("batch", [(7,), (4, 5), ()])
def test_update_equals_numpy_concatenated_stream(batch):
    rng = np.random.default_rng(0)
    s = _empty((3,))
    chunks = []
    for _ in range(6):
        x = rng.normal(2.0, 3.0, size=batch + (3,))
        s = stats.update(s, torch.as_tensor(x, dtype=torch.float32))
        chunks.append(x.astype(np.float32).astype(np.float64).reshape(-1, 3))
    x = np.concatenate(chunks)
    _close(s, x.mean(0), x.var(0), float(x.shape[0]), rtol=1e-12)


def test_offset_1e6_no_cancellation():
    rng = np.random.default_rng(1)
    s_empty, s_prior = _empty((2,)), stats.init((2,))
    chunks = []
    for _ in range(50):
        x = 1e6 + rng.normal(0.0, 1e-2, size=(16, 2))
        s_empty = stats.update(s_empty, torch.as_tensor(x))
        s_prior = stats.update(s_prior, torch.as_tensor(x))
        chunks.append(x)
    x = np.concatenate(chunks)
    # var is 1e-4 at mean 1e6: a one-pass E[x^2] - E[x]^2 in float64 would be off by ~100%;
    # 1e-6 is what the inputs' own rounding (ulp(1e6) ~ 1e-10 vs deviations ~ 1e-2) allows
    _close(s_empty, x.mean(0), x.var(0), 800.0, rtol=1e-6)
    mean, var, count = _np_pooled_with_prior(x)
    np.testing.assert_allclose(s_prior["mean"].numpy(), mean, rtol=1e-13)
    np.testing.assert_allclose(s_prior["var"].numpy(), var, rtol=1e-6)
    np.testing.assert_allclose(float(s_prior["count"]), count, rtol=1e-15)


def test_long_stream():
    rng = np.random.default_rng(2)
    s = stats.init(())
    chunks = []
    for i in range(2000):
        x = rng.normal(float(i % 7), 1.0 + (i % 3), size=(64,)) + 1e3
        s = stats.update(s, torch.as_tensor(x))
        chunks.append(x)
    x = np.concatenate(chunks)
    mean, var, count = _np_pooled_with_prior(x)
    np.testing.assert_allclose(float(s["mean"]), mean, rtol=1e-13)
    np.testing.assert_allclose(float(s["var"]), var, rtol=1e-10)
    np.testing.assert_allclose(float(s["count"]), count, rtol=1e-15)


def test_huge_count_stays_exact_and_stable():
    # 2**52 samples already seen: a float32 count would have stopped moving at 2**24
    s = stats.init(())
    s["count"] = torch.tensor(2.0**52, dtype=torch.float64)
    s["mean"] = torch.tensor(5.0, dtype=torch.float64)
    s["var"] = torch.tensor(2.0, dtype=torch.float64)
    s2 = stats.update(s, torch.tensor([5.0, 5.0], dtype=torch.float64))
    assert float(s2["count"]) == 2.0**52 + 2
    assert float(s2["mean"]) == 5.0
    np.testing.assert_allclose(float(s2["var"]), 2.0 * 2**52 / (2**52 + 2), rtol=1e-15)
    # doubling 40 times (a trillion-sample stream of identical halves) does not drift
    s3 = stats.update(_empty(()), torch.tensor([1.0, 3.0], dtype=torch.float64))
    for _ in range(40):
        s3 = stats.merge(s3, s3)
    assert float(s3["count"]) == 2.0**41
    assert float(s3["mean"]) == 2.0
    np.testing.assert_allclose(float(s3["var"]), 1.0, rtol=1e-14)


def test_mask_counts_only_selected_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 2))
    mask = rng.random((3, 4)) < 0.5
    mask[0, 0] = True
    x_poisoned = x.copy()
    x_poisoned[~mask] = np.nan  # unselected rows may hold anything
    s = stats.update(_empty((2,)), torch.as_tensor(x_poisoned), torch.as_tensor(mask))
    sel = x[mask]
    _close(s, sel.mean(0), sel.var(0), float(mask.sum()), rtol=1e-12)


def test_mask_selecting_nothing_is_bit_exact_noop():
    s = stats.update(stats.init((3,)), torch.randn(5, 3, dtype=torch.float64) * 7 + 3)
    x = torch.full((4, 3), float("nan"))
    s2 = stats.update(s, x, torch.zeros(4, dtype=torch.bool))
    for k in ("mean", "var", "count"):
        assert torch.equal(s2[k], s[k]), k
    s3 = stats.merge(s, _empty((3,)))
    s4 = stats.merge(_empty((3,)), s)
    for k in ("mean", "var", "count"):
        assert torch.equal(s3[k], s[k]) and torch.equal(s4[k], s[k]), k


def test_matches_gymnasium_running_mean_std():
    rng = np.random.default_rng(4)
    ref = RunningMeanStd(shape=(3,))
    s = stats.init((3,))
    for i in range(30):
        x = rng.normal(loc=[0.0, 10.0, -1e6], scale=[1.0, 0.1, 5.0], size=(1 + i % 5, 3))
        ref.update(x)
        s = stats.update(s, torch.as_tensor(x))
    np.testing.assert_allclose(s["mean"].numpy(), ref.mean, rtol=1e-14)
    np.testing.assert_allclose(s["var"].numpy(), ref.var, rtol=1e-9)
    assert float(s["count"]) == pytest.approx(ref.count, rel=1e-15)


def test_shape_errors_name_both_shapes():
    s = stats.init((3,))
    with pytest.raises(ValueError, match=r"3.*\(5, 4\)"):
        stats.update(s, torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"\(5,\).*\(4,\)"):
        stats.update(s, torch.zeros(5, 3), torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip", [None, 1.5])
def test_normalize_against_numpy(dtype, clip):
    rng = np.random.default_rng(5)
    data = rng.normal(3.0, 2.0, size=(100, 2))
    s = stats.update(stats.init((2,)), torch.as_tensor(data))
    x = torch.as_tensor(rng.normal(3.0, 4.0, size=(6, 2)), dtype=dtype)
    y = stats.normalize(s, x, eps=1e-8, clip=clip)
    ref = (x.double().numpy() - s["mean"].numpy()) / np.sqrt(s["var"].numpy() + 1e-8)
    if clip is not None:
        ref = np.clip(ref, -clip, clip)
        assert float(y.abs().max()) == pytest.approx(clip)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6 if dtype == torch.float32 else 1e-15)


def test_vmap_over_stacked_statistics():
    rng = np.random.default_rng(6)
    xs = torch.as_tensor(rng.normal(size=(4, 10, 2)))
    masks = torch.as_tensor(rng.random((4, 10)) < 0.6)
    base = torch.stack([stats.init((2,)) for _ in range(4)])
    out = torch.vmap(stats.update)(base, xs, masks)
    for i in range(4):
        sel = xs[i][masks[i]].numpy()
        mean, var, count = _np_pooled_with_prior(sel)
        np.testing.assert_allclose(out["mean"][i].numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(out["var"][i].numpy(), var, rtol=1e-12)
        np.testing.assert_allclose(float(out["count"][i]), count, rtol=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    x=hnp.arrays(
        np.float64,
        st.integers(2, 40),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    ),
    offset=st.sampled_from([0.0, 1e6]),
)
def test_any_split_any_grouping_merges_to_same_result(data, x, offset):
    x = x + offset
    cuts = data.draw(
        st.lists(st.integers(1, len(x) - 1), unique=True, max_size=min(8, len(x) - 1)), "cuts"
    )
    pieces = np.split(x, sorted(cuts))
    parts = [stats.update(_empty(()), torch.as_tensor(p)) for p in pieces]
    # merge in a random order and grouping: repeatedly combine two random parts
    while len(parts) > 1:
        i = data.draw(st.integers(0, len(parts) - 1), "i")
        a = parts.pop(i)
        j = data.draw(st.integers(0, len(parts) - 1), "j")
        b = parts.pop(j)
        parts.append(stats.merge(a, b))
    (s,) = parts
    # absolute slack = what rounding the inputs themselves allows (ulp of the largest |x|), and
    # at least the smallest normal float64: a subnormal result (the variance of [1e-158, 0, 0],
    # say) has too few bits for any relative tolerance
    ulp = 100 * np.finfo(np.float64).eps * float(np.abs(x).max())
    tiny = np.finfo(np.float64).tiny
    assert float(s["count"]) == len(x)
    np.testing.assert_allclose(float(s["mean"]), x.mean(), rtol=1e-10, atol=max(ulp, tiny))
    np.testing.assert_allclose(
        float(s["var"]), x.var(), rtol=1e-10, atol=max(ulp * (x.std() + ulp), tiny)
    )
