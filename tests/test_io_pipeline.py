"""The analog MVM with its periphery (SPEC §1), against numpy float64 references:
perfect IO, DAC/ADC quantization, noise statistics, noise management, bound management, tile
splitting and the backward pass."""

import numpy as np
import pytest
from conftest import analog_tile, f32, io_params, mapping, matmul_tol, quiet_io

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import (
    BoundManagementType,
    IOParameters,
    NoiseManagementType,
    WeightNoiseType,
)

io_mvm = rpu_base.tiles.io_mvm
NM = NoiseManagementType
BM = BoundManagementType
F32 = float(np.finfo(np.float32).eps)


def mvm(W, x, io, **kw):
    kw.setdefault("mapping", mapping())
    return io_mvm(f32(W), f32(x), io=io, **kw)


# --------------------------------------------------------------------------- perfect IO


@pytest.mark.parametrize("out_scale", [1.0, 2.5, -0.75])
@pytest.mark.parametrize("transposed", [False, True])
def test_perfect_io_is_matmul(out_scale, transposed):
    g = np.random.default_rng(0)
    W = f32(g.normal(size=(30, 40)))
    x = f32(g.normal(size=(8, 30 if transposed else 40)) * 3)
    A = W.T if transposed else W
    y = mvm(W, x, io_params(is_perfect=True, out_scale=out_scale), transposed=transposed)
    ref = x.astype(np.float64) @ A.astype(np.float64).T * out_scale
    assert y.shape == ref.shape and y.dtype == np.float32
    assert np.all(np.abs(y - ref) <= matmul_tol(x, A) * abs(out_scale) + 1e-6 * np.abs(ref))


def test_perfect_io_ignores_noise_and_bounds():
    g = np.random.default_rng(1)
    W = f32(g.normal(size=(20, 10)) * 10)  # outputs far beyond out_bound
    x = f32(g.normal(size=(5, 10)) * 7)
    io = io_params(is_perfect=True, out_noise=1.0, inp_noise=1.0, w_noise=1.0,
                   w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT)
    y = mvm(W, x, io)
    ref = x.astype(np.float64) @ W.astype(np.float64).T
    assert np.all(np.abs(y - ref) <= matmul_tol(x, W))


def test_out_scale_and_alpha_in_non_perfect_pipeline():
    g = np.random.default_rng(2)
    W = f32(g.uniform(-0.5, 0.5, size=(12, 9)))
    x = f32(g.uniform(-1, 1, size=(6, 9)))
    y1 = mvm(W, x, io_params(), seed=3, call=1)
    y2 = mvm(W, x, io_params(out_scale=2.5), seed=3, call=1)
    np.testing.assert_array_equal(y2, y1 * np.float32(2.5))
    a = f32(g.uniform(0.5, 2, size=12))
    y3 = mvm(W, x, io_params(), seed=3, call=1, alpha=a)
    np.testing.assert_allclose(y3, y1 * a, rtol=2 * F32)
    y4 = mvm(W, x, io_params(), seed=3, call=1, alpha=f32([1.7]))
    np.testing.assert_allclose(y4, y1 * np.float32(1.7), rtol=2 * F32)


# --------------------------------------------------------------------------- quantization


def _res_fraction(res):
    return 0.0 if res <= 0 else (1.0 / res if res > 1 else res)


def _expected_quantized(v, res, bound):
    """SPEC §1.4/1.7 in float64: round-half-up to multiples of res*2*bound, clip to bound."""
    step = _res_fraction(res) * 2 * bound
    if step == 0:
        return np.clip(v, -bound, bound), 0.0
    return np.clip(np.floor(v / step + 0.5) * step, -bound, bound), step


def _away_from_ties(v, step):
    if step == 0:
        return np.ones_like(v, dtype=bool)
    frac = v / step - np.floor(v / step)
    return np.abs(frac - 0.5) > 1e-3


@pytest.mark.parametrize("res", [1 / 126, 1 / 254, 16.0, 0.0])
@pytest.mark.parametrize("inp_bound", [1.0, 2.0])
def test_input_quantization_levels(res, inp_bound):
    # W = identity and no noise management: the output is the DAC output itself.
    K = 64
    g = np.random.default_rng(3)
    x = g.uniform(-1.3 * inp_bound, 1.3 * inp_bound, size=(50, K))
    x[0, :] = np.linspace(-1.3 * inp_bound, 1.3 * inp_bound, K)
    x = f32(x)
    y = mvm(np.eye(K), x, quiet_io(inp_res=res, inp_bound=inp_bound, noise_management=NM.NONE))
    exp, step = _expected_quantized(x.astype(np.float64), res, inp_bound)
    ok = _away_from_ties(x.astype(np.float64), step)
    assert ok.mean() > 0.95
    np.testing.assert_allclose(y[ok], exp[ok], rtol=0, atol=1e-6 * inp_bound)
    assert np.all(np.abs(y) <= inp_bound)
    assert np.any(np.abs(y) == inp_bound)  # clipped values sit exactly at the bound
    if step > 0:
        k = y.astype(np.float64) / step
        inner = np.abs(y) < inp_bound
        np.testing.assert_allclose(k[inner], np.round(k[inner]), atol=1e-4)
        # the dense sweep hits every level between the bounds
        n_levels = len(np.unique(np.round(k)))
        assert n_levels == 2 * int(np.floor(inp_bound / step + 1e-9)) + 1 + (
            0 if abs(inp_bound / step - round(inp_bound / step)) < 1e-6 else 2)


@pytest.mark.parametrize("res", [1 / 254, 1 / 510, 16.0, 0.0])
def test_output_quantization_levels(res):
    K = 40
    g = np.random.default_rng(4)
    x = f32(g.uniform(-1, 1, size=(60, K)))
    W = np.eye(K) * 15.0  # outputs up to 15 > out_bound = 12
    y = mvm(W, x, quiet_io(out_res=res, out_bound=12.0, noise_management=NM.NONE))
    v = 15.0 * x.astype(np.float64)
    exp, step = _expected_quantized(v, res, 12.0)
    ok = _away_from_ties(v, step)
    np.testing.assert_allclose(y[ok], exp[ok], rtol=0, atol=2e-5 * 12)
    assert np.max(np.abs(y)) == 12.0
    if step > 0:
        inner = np.abs(y) < 12.0
        k = y[inner].astype(np.float64) / step
        np.testing.assert_allclose(k, np.round(k), atol=1e-4)


def test_rounding_is_round_half_up():
    # step 0.125 (res = 16 steps) is exact in binary: ties are exact.
    x = f32([[0.0625, -0.0625, 0.1875, -0.1875, 0.3125, -0.9375]])
    y = mvm(np.eye(6), x, quiet_io(inp_res=16.0, noise_management=NM.NONE))
    np.testing.assert_array_equal(y[0], f32([0.125, 0.0, 0.25, -0.125, 0.375, -0.875]))


@pytest.mark.parametrize("side", ["inp", "out"])
def test_stochastic_rounding_is_unbiased(side):
    vals = np.array([0.3, -0.47, 0.123, 0.9, -0.01, 0.5])
    K, N = len(vals), 20000
    x = f32(np.tile(vals, (N, 1)))
    if side == "inp":
        io = quiet_io(inp_res=1 / 126, inp_sto_round=True, noise_management=NM.NONE)
        step = 2 / 126
    else:
        io = quiet_io(out_res=1 / 254, out_bound=1.0, out_sto_round=True, noise_management=NM.NONE)
        step = 2 / 254
    y = mvm(np.eye(K), x, io, seed=7).astype(np.float64)
    lo = np.floor(vals / step) * step
    p = vals / step - np.floor(vals / step)
    for j in range(K):
        # only the two neighbouring levels occur
        assert np.all(np.isclose(y[:, j], lo[j], atol=1e-6) | np.isclose(y[:, j], lo[j] + step, atol=1e-6))
        # mean of a two-level variable: std step*sqrt(p(1-p)/N); 5 sigma (+ float slack)
        tol = 5 * step * np.sqrt(p[j] * (1 - p[j]) / N) + 1e-6
        assert abs(y[:, j].mean() - vals[j]) < tol, (j, y[:, j].mean(), vals[j])
    # deterministic rounding of the same values is biased for most of them (sanity of the test)
    io_det = quiet_io(inp_res=1 / 126, noise_management=NM.NONE) if side == "inp" else \
        quiet_io(out_res=1 / 254, out_bound=1.0, noise_management=NM.NONE)
    y_det = mvm(np.eye(K), x[:1], io_det)
    assert np.sum(np.abs(y_det[0] - vals) > 1e-3) >= 3


# --------------------------------------------------------------------------- noise statistics


def _std_tol(sigma, n):
    """5 sigma of the sample std: std(s) ~ sigma / sqrt(2 n)."""
    return 5 * sigma / np.sqrt(2 * n)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_output_noise_std(scale):
    # W = 0 and max|x| = scale: y = scale * out_noise * xi (out noise is added before the ADC
    # in the normalized domain, then multiplied by the noise-management scale).
    sigma, N, M = 0.1, 1000, 100
    x = f32(np.tile([scale, -0.3, 0.1], (N, 1)))
    y = mvm(np.zeros((M, 3)), x, quiet_io(out_noise=sigma), seed=5).astype(np.float64)
    n = y.size
    assert abs(y.mean()) < 5 * scale * sigma / np.sqrt(n)
    assert abs(y.std() - scale * sigma) < _std_tol(scale * sigma, n)


def test_output_noise_with_default_adc_keeps_std():
    # Default out_res 1/510 (step 0.047 at out_bound 12): rounding adds step^2/12 variance.
    sigma, N, M = 0.5, 500, 100
    x = f32(np.tile([1.0, 0.2], (N, 1)))
    y = mvm(np.zeros((M, 2)), x, io_params(out_noise=sigma, inp_res=0.0), seed=6).astype(np.float64)
    step = 24 / 510
    expect = np.sqrt(sigma**2 + step**2 / 12)
    assert abs(y.std() - expect) < _std_tol(expect, y.size)


def test_input_noise_std_identity_and_general_weights():
    sigma, N = 0.05, 400
    g = np.random.default_rng(8)
    K = 50
    x = f32(g.uniform(-0.5, 0.5, size=(N, K)))
    io = quiet_io(inp_noise=sigma, noise_management=NM.NONE)
    y = mvm(np.eye(K), x, io, seed=9).astype(np.float64)
    r = y - x
    assert abs(r.mean()) < 5 * sigma / np.sqrt(r.size)
    assert abs(r.std() - sigma) < _std_tol(sigma, r.size)
    # general W: var(y_j) = sigma^2 * ||w_j||^2
    M = 40
    W = f32(g.uniform(-1, 1, size=(M, K)))
    y = mvm(W, x, io, seed=9, call=1).astype(np.float64)
    ref = x.astype(np.float64) @ W.astype(np.float64).T
    z = (y - ref) / (sigma * np.linalg.norm(W.astype(np.float64), axis=1))
    assert abs(z.std() - 1) < _std_tol(1, z.size)


def test_weight_noise_additive_constant():
    # One noisy copy of W per call: y_j = sum_k (w_jk + sigma xi_jk) x_k, var = sigma^2 |x|^2.
    sigma, M = 0.02, 20000
    g = np.random.default_rng(10)
    W = f32(g.uniform(-0.5, 0.5, size=(M, 4)))
    x = f32([[1.0, -0.5, 0.25, 0.75]])
    io = quiet_io(w_noise=sigma, w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT)
    ref = (x.astype(np.float64) @ W.astype(np.float64).T)[0]
    r0 = mvm(W, x, io, seed=1, call=0)[0] - ref
    sd = sigma * np.linalg.norm(x)
    assert abs(r0.mean()) < 5 * sd / np.sqrt(M)
    assert abs(r0.std() - sd) < _std_tol(sd, M)
    # fresh each call
    r1 = mvm(W, x, io, seed=1, call=1)[0] - ref
    assert abs(np.corrcoef(r0, r1)[0, 1]) < 5 / np.sqrt(M)
    np.testing.assert_array_equal(mvm(W, x, io, seed=1, call=0)[0] - ref, r0)
    # all rows of one call share the same noisy weights: two identical rows agree exactly
    y2 = mvm(W, np.vstack([x, x]), io, seed=1, call=0)
    np.testing.assert_array_equal(y2[0], y2[1])


def test_weight_noise_pcm_read():
    # PCM_READ: w + sigma sqrt(|w|) xi  ->  var(y_j) = sigma^2 sum_k |w_jk| x_k^2.
    sigma, M = 0.05, 20000
    g = np.random.default_rng(11)
    W = f32(g.uniform(-1, 1, size=(M, 4)))
    x = f32([[1.0, -0.5, 0.25, 0.75]])
    io = quiet_io(w_noise=sigma, w_noise_type=WeightNoiseType.PCM_READ)
    W64 = W.astype(np.float64)
    ref = (x.astype(np.float64) @ W64.T)[0]
    sd = sigma * np.sqrt(np.abs(W64) @ (x[0].astype(np.float64) ** 2))
    z = (mvm(W, x, io, seed=2)[0] - ref) / sd
    assert abs(z.mean()) < 5 / np.sqrt(M)
    assert abs(z.std() - 1) < _std_tol(1, M)
    # the noise really depends on |w|: zero weights get none
    W0 = W.copy()
    W0[:, 1] = 0.0
    x1 = f32([[0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(mvm(W0, x1, io, seed=2)[0], np.zeros(M, np.float32))


# --------------------------------------------------------------------------- noise management


@pytest.mark.parametrize("c", [4.0, 0.25, 1 / 64, 32.0])
def test_abs_max_makes_output_scale_invariant(c):
    # Powers of two scale exactly in float32, so with the same noise draws the output scales
    # exactly (default IO: quantization and output noise on).
    g = np.random.default_rng(12)
    W = f32(g.uniform(-0.3, 0.3, size=(25, 30)))
    x = f32(g.uniform(-1, 1, size=(10, 30)))
    io = io_params()
    y = mvm(W, x, io, seed=4, call=2)
    yc = mvm(W, x * np.float32(c), io, seed=4, call=2)
    np.testing.assert_array_equal(yc, y * np.float32(c))


def test_abs_max_scale_invariance_general_factor():
    g = np.random.default_rng(13)
    W = f32(g.uniform(-0.3, 0.3, size=(25, 30)))
    x = f32(g.uniform(-1, 1, size=(10, 30)))
    io = quiet_io(inp_res=1 / 126, out_res=1 / 510)
    y = mvm(W, x, io).astype(np.float64)
    yc = mvm(W, x * np.float32(3.7), io).astype(np.float64) / 3.7
    # x*3.7/(3.7*s) may differ from x/s by one ulp and flip a rounding tie: allow rare
    # single-step flips, but nearly all values must agree.
    close = np.abs(yc - y) < 1e-5 * (1 + np.abs(y))
    assert close.mean() > 0.98


def test_noise_management_none_is_not_scale_invariant():
    g = np.random.default_rng(14)
    W = f32(g.uniform(-0.3, 0.3, size=(25, 30)))
    x = f32(g.uniform(-1, 1, size=(10, 30)))
    io = quiet_io(inp_res=1 / 126, noise_management=NM.NONE)
    c = 1 / 64
    y = mvm(W, x, io).astype(np.float64)
    yc = mvm(W, x * np.float32(c), io).astype(np.float64) / c
    # small inputs fall below the DAC step (2/126 = 0.016 > max|c x| = 0.016) and vanish
    assert np.linalg.norm(yc - y) > 0.5 * np.linalg.norm(y)
    # and large inputs clip at inp_bound
    y4 = mvm(W, x * np.float32(4), io).astype(np.float64) / 4
    assert np.linalg.norm(y4 - y) > 0.2 * np.linalg.norm(y)


def _clip_pipeline(W, x, s, bound=1.0):
    """y = s * W clip(x / s, -bound, bound) per row (no quantization, no noise)."""
    s = np.asarray(s, np.float64).reshape(-1, 1)
    xs = np.clip(x.astype(np.float64) / s, -bound, bound)
    return (xs @ W.astype(np.float64).T) * s


def test_noise_management_constant_uses_nm_thres():
    g = np.random.default_rng(15)
    W = f32(g.uniform(-0.5, 0.5, size=(8, 12)))
    x = f32(g.uniform(-3, 3, size=(20, 12)))  # beyond nm_thres: clipped at the DAC
    io = quiet_io(noise_management=NM.CONSTANT, nm_thres=2.0)
    y = mvm(W, x, io)
    ref = _clip_pipeline(W, x, 2.0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # a row whose max is below nm_thres is not rescaled to the full range: with a coarse DAC
    # it is quantized on the fixed grid 2 * k * step
    io_q = quiet_io(noise_management=NM.CONSTANT, nm_thres=2.0, inp_res=16.0)
    xr = f32([[0.3, -0.2] + [0.0] * 10])  # /2 -> 0.15, -0.1 -> levels 0.125, -0.125
    y = mvm(W, xr, io_q)
    exp = 2.0 * (W[:, 0].astype(np.float64) * 0.125 - W[:, 1].astype(np.float64) * 0.125)
    np.testing.assert_allclose(y[0], exp, rtol=1e-5, atol=1e-6)


def test_abs_max_nm_thres_caps_the_scale():
    # aihwkit semantics: alpha = min(max|x|, nm_thres) for ABS_MAX; larger inputs clip.
    W = f32(np.random.default_rng(19).uniform(-0.5, 0.5, size=(6, 4)))
    x = f32([[2.0, -1.0, 0.3, 0.1], [0.2, -0.1, 0.05, 0.0]])
    y = mvm(W, x, quiet_io(nm_thres=0.5))
    ref = np.vstack([_clip_pipeline(W, x[:1], 0.5), _clip_pipeline(W, x[1:], 0.2)])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_noise_management_max():
    # MAX: s = max x (the largest signed value); negative inputs beyond -s clip.
    W = f32(np.random.default_rng(16).uniform(-0.5, 0.5, size=(6, 4)))
    x = f32([[0.5, -2.0, 0.25, 0.1], [-1.0, -0.5, -0.2, -0.1]])  # 2nd row: max < 0 -> abs max
    y = mvm(W, x, quiet_io(noise_management=NM.MAX))
    ref = np.vstack([_clip_pipeline(W, x[:1], 0.5), _clip_pipeline(W, x[1:], 1.0)])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_noise_management_average_abs_max():
    g = np.random.default_rng(17)
    W = f32(g.uniform(-0.5, 0.5, size=(7, 10)))
    x = g.uniform(-1, 1, size=(6, 10))
    x *= np.array([0.2, 0.5, 1.0, 2.0, 4.0, 0.1])[:, None]
    x = f32(x)
    s = np.mean(np.max(np.abs(x.astype(np.float64)), axis=1))  # one scale for the batch
    y = mvm(W, x, quiet_io(noise_management=NM.AVERAGE_ABS_MAX))
    np.testing.assert_allclose(y, _clip_pipeline(W, x, np.full(6, s)), rtol=1e-5, atol=1e-5)
    # rows above the average clip, so it differs from per-row ABS_MAX
    y_abs = mvm(W, x, quiet_io(noise_management=NM.ABS_MAX))
    assert np.max(np.abs(y - y_abs)) > 0.1


def test_zero_input_row_gives_zero_output_even_with_noise():
    W = f32(np.random.default_rng(18).uniform(-1, 1, size=(9, 5)))
    x = f32([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    y = mvm(W, x, io_params(out_noise=0.5, inp_noise=0.1), seed=3)
    np.testing.assert_array_equal(y[0], np.zeros(9, np.float32))
    assert np.any(y[1] != 0)


# --------------------------------------------------------------------------- bound management


def _bm_case():
    K = 64
    W = np.zeros((3, K), np.float32)
    W[0] = 0.5  # W x = 32 for x = ones: saturates out_bound 12
    W[1] = -0.5  # -32
    W[2] = 0.01  # 0.64
    return W, np.ones((1, K), np.float32)


def test_iterative_bound_management_recovers_saturated_outputs():
    W, x = _bm_case()
    ref = (x.astype(np.float64) @ W.astype(np.float64).T)[0]
    y_none = mvm(W, x, quiet_io(bound_management=BM.NONE, out_bound=12.0))[0]
    np.testing.assert_allclose(y_none, [12.0, -12.0, 0.64], rtol=1e-5)
    for bm in (BM.ITERATIVE, BM.ITERATIVE_WORST_CASE):
        y = mvm(W, x, quiet_io(bound_management=bm, out_bound=12.0))[0]
        np.testing.assert_allclose(y, ref, rtol=1e-5)


def test_iterative_bound_management_with_default_periphery():
    # Default DAC/ADC and output noise: r = 4 here, so the error is r * s * (sum|w| inp_step/2
    # + out_step/2 + 5 out_noise).
    W, x = _bm_case()
    ref = (x.astype(np.float64) @ W.astype(np.float64).T)[0]
    y = mvm(W, x, io_params(), seed=1)[0]
    r = 4
    tol = r * (np.abs(W).sum(1) * (2 / 126) / 2 + 24 / 510 / 2 + 5 * 0.06)
    assert np.all(np.abs(y - ref) <= tol), (y, ref, tol)


def test_bound_management_leaves_unsaturated_rows_bit_identical():
    W, x_sat = _bm_case()
    x_ok = np.zeros((1, 64), np.float32)
    x_ok[0, 0] = 1.0  # W x = W[:, 0] = (0.5, -0.5, 0.01): no saturation
    x = np.vstack([x_sat, x_ok, x_sat * 0.5])
    y_bm = mvm(W, x, io_params(bound_management=BM.ITERATIVE), seed=9, call=3)
    y_no = mvm(W, x, io_params(bound_management=BM.NONE), seed=9, call=3)
    np.testing.assert_array_equal(y_bm[1], y_no[1])
    assert abs(y_bm[0, 0] - 32) < 3 and y_no[0, 0] == pytest.approx(12.0, abs=0.5)
    # bound_management=False at the call (the backward pass) disables it too
    y_off = mvm(W, x, io_params(bound_management=BM.ITERATIVE), seed=9, call=3, bound_management=False)
    np.testing.assert_array_equal(y_off, y_no)


@pytest.mark.parametrize("factor,expected", [(2.0, 24.0), (4.0, 48.0), (3.0, 24.0), (8.0, 64.0)])
def test_max_bm_factor_limits_bound_management(factor, expected):
    # W x = 64: r doubles from 1 but never beyond max_bm_factor; while W x / r still
    # saturates the output is out_bound * r (factor 8: 64 / 8 = 8 < 12, recovered).
    W, x = _bm_case()
    W[0], W[1] = 1.0, -1.0
    y = mvm(W, x, quiet_io(bound_management=BM.ITERATIVE, max_bm_factor=factor))[0]
    assert y[0] == pytest.approx(expected, rel=1e-6)
    assert y[1] == pytest.approx(-expected, rel=1e-6)
    assert y[2] == pytest.approx(0.64, rel=1e-5)


def test_max_bm_res_limits_bound_management():
    # r <= max_bm_res / inp_res = (1/32) / (1/64) = 2; x / r = 0.5 is a DAC level (step 1/32).
    W, x = _bm_case()
    y = mvm(W, x, quiet_io(bound_management=BM.ITERATIVE, inp_res=1 / 64, max_bm_res=1 / 32))[0]
    assert y[0] == pytest.approx(24.0, rel=1e-6)


# --------------------------------------------------------------------------- tile splitting


def test_split_700x600_perfect_equals_matmul():
    g = np.random.default_rng(20)
    W = f32(g.normal(size=(700, 600)) * 0.1)
    x = f32(g.normal(size=(16, 600)))
    y = mvm(W, x, io_params(is_perfect=True), mapping=mapping(256, 256))
    ref = x.astype(np.float64) @ W.astype(np.float64).T
    assert np.all(np.abs(y - ref) <= matmul_tol(x, W))
    d = f32(g.normal(size=(16, 700)))
    z = mvm(W, d, io_params(is_perfect=True), mapping=mapping(256, 256), transposed=True)
    assert np.all(np.abs(z - d.astype(np.float64) @ W.astype(np.float64)) <= matmul_tol(d, W.T))


def test_split_noise_free_pipeline_equals_matmul():
    # Without quantization, noise and output bound, per-tile noise management cancels.
    g = np.random.default_rng(21)
    W = f32(g.normal(size=(700, 600)) * 0.1)
    x = f32(g.normal(size=(16, 600)))
    y = mvm(W, x, quiet_io(out_bound=0.0), mapping=mapping(256, 256))
    ref = x.astype(np.float64) @ W.astype(np.float64).T
    assert np.all(np.abs(y - ref) <= 4 * matmul_tol(x, W) + 1e-6)


def _quantize_like_dac(x_block, s, step):
    """DAC of one tile emulated in float32 as rpucuda does it: x * (1/s), /step, floor(+0.5)."""
    f = np.float32(1.0) / np.float32(s)
    v = (x_block.astype(np.float32) * f).astype(np.float32)
    q = np.floor((v / np.float32(step)).astype(np.float32) + np.float32(0.5)).astype(np.float32)
    return np.clip(q * np.float32(step), -1.0, 1.0).astype(np.float64)


def _split_reference(W, x, max_in, max_out, step, transposed=False):
    """Per-tile ABS_MAX noise management + DAC, exact analog sum, digital accumulation."""
    A = (W.T if transposed else W).astype(np.float64)
    out, inn = A.shape
    in_chunk = max_out if transposed else max_in
    out_chunk = max_in if transposed else max_out
    y = np.zeros((x.shape[0], out))
    for o0 in range(0, out, out_chunk):
        for i0 in range(0, inn, in_chunk):
            xb = x[:, i0:i0 + in_chunk]
            Ab = A[o0:o0 + out_chunk, i0:i0 + in_chunk]
            for n in range(x.shape[0]):
                s = np.max(np.abs(xb[n]))
                if s == 0:
                    continue
                y[n, o0:o0 + out_chunk] += s * (Ab @ _quantize_like_dac(xb[n], s, step))
    return y


@pytest.mark.parametrize("transposed", [False, True])
def test_split_noise_management_is_per_tile(transposed):
    g = np.random.default_rng(22)
    M, K = 700, 600
    W = f32(g.uniform(-0.1, 0.1, size=(M, K)))
    n_in = M if transposed else K
    x = g.uniform(-1, 1, size=(6, n_in))
    x[:, 256:512] *= 0.01  # the second input tile sees tiny inputs only
    x[:, 512:] *= 0.3
    x = f32(x)
    step = 2 / 126
    io = quiet_io(inp_res=1 / 126, out_bound=0.0)
    y = mvm(W, x, io, mapping=mapping(256, 256), transposed=transposed).astype(np.float64)
    ref = _split_reference(W, x, 256, 256, step, transposed)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * scale)
    # a single global scale would lose the small tile below one DAC step: clearly different
    glob = _split_reference(W, x, 10**6, 10**6, step, transposed)
    assert np.max(np.abs(glob - ref)) > 100 * 1e-5 * scale


# --------------------------------------------------------------------------- tiles: forward / backward


def test_tile_forward_is_io_mvm_with_tile_generator():
    g = np.random.default_rng(23)
    t = analog_tile(10, 7, forward=IOParameters(inp_noise=0.01), seed=42)
    W = f32(g.uniform(-0.5, 0.5, size=(10, 7)))
    t.set_raw_weights(W)
    x = f32(g.uniform(-1, 1, size=(5, 7)))
    for _ in range(3):
        c = t.call_index
        y = t.forward(x)
        assert t.call_index == c + 1
        np.testing.assert_array_equal(y, io_mvm(W, x, io=t.forward_io, mapping=t.mapping, seed=42, call=c))


def test_tile_backward_is_d_times_w():
    g = np.random.default_rng(24)
    W = f32(g.uniform(-0.5, 0.5, size=(10, 7)))
    d = f32(g.uniform(-1, 1, size=(5, 10)))
    ref = d.astype(np.float64) @ W.astype(np.float64)
    t = analog_tile(10, 7, backward=IOParameters(is_perfect=True))
    t.set_raw_weights(W)
    z = t.backward(d)
    assert z.shape == (5, 7)
    assert np.all(np.abs(z - ref) <= matmul_tol(d, W.T))
    # default backward periphery: same pipeline on W^T, within quantization + noise
    t = analog_tile(10, 7, seed=5)
    t.set_raw_weights(W)
    c = t.call_index
    z = t.backward(d)
    np.testing.assert_array_equal(
        z, io_mvm(W, d, io=t.backward_io, mapping=t.mapping, seed=5, call=c, transposed=True,
                  bound_management=False))
    s = np.abs(d).max(1, keepdims=True)
    tol = s * (np.abs(W).sum(0) * (2 / 126) / 2 + 24 / 510 / 2 + 5 * 0.06)
    assert np.all(np.abs(z - ref) <= tol)


def test_backward_has_no_bound_management():
    W = np.full((64, 3), 0.5, np.float32)  # W^T d = 32 for d = ones
    d = np.ones((1, 64), np.float32)
    t = analog_tile(64, 3, backward=IOParameters(out_noise=0.0, inp_res=0.0, out_res=0.0))
    t.set_raw_weights(W)
    np.testing.assert_allclose(t.backward(d)[0], [12.0, 12.0, 12.0], rtol=1e-6)
    # the forward of the same periphery recovers (bound management on)
    Wf = np.full((3, 64), 0.5, np.float32)
    t2 = analog_tile(3, 64, forward=IOParameters(out_noise=0.0, inp_res=0.0, out_res=0.0))
    t2.set_raw_weights(Wf)
    np.testing.assert_allclose(t2.forward(d)[0], [32.0, 32.0, 32.0], rtol=1e-6)
