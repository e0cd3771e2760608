"""Philox4x32-10 generator of rpucuda (rng.h): known-answer vectors, counter layout, the normal
and uniform transforms, and the statistics of the noise it feeds into the IO pipeline."""

import numpy as np
import pytest
from conftest import f32, mapping, quiet_io

from aihw_deploy.simulator import rpu_base

rng_mod = rpu_base.rng

MASK = 0xFFFFFFFF


def philox_ref(ctr, key):
    """Independent pure-Python Philox4x32-10 (Salmon et al., SC'11)."""
    c = list(ctr)
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        hi0, lo0 = p0 >> 32, p0 & MASK
        hi1, lo1 = p1 >> 32, p1 & MASK
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0 = (k0 + 0x9E3779B9) & MASK
        k1 = (k1 + 0xBB67AE85) & MASK
    return c


# Random123 known-answer vectors (kat_vectors, philox4x32 10 rounds).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK,) * 4, (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(rng_mod.philox4x32_10(list(ctr), list(key))) == expected
    assert tuple(philox_ref(ctr, key)) == expected  # the reference itself is right


def test_philox_matches_reference_on_random_inputs():
    g = np.random.default_rng(1)
    for _ in range(200):
        ctr = [int(v) for v in g.integers(0, 2**32, 4)]
        key = [int(v) for v in g.integers(0, 2**32, 2)]
        assert list(rng_mod.philox4x32_10(ctr, key)) == philox_ref(ctr, key)


def _block_words(seed, tag, sub, call, block):
    """The counter layout documented in rng.h."""
    c3 = ((tag << 24) | ((sub & 0xFF) << 16) | ((call >> 32) & 0xFFFF)) & MASK
    ctr = (block & MASK, (block >> 32) & MASK, call & MASK, c3)
    return philox_ref(ctr, (seed & MASK, (seed >> 32) & MASK))


def _normal4_ref(words):
    """Box-Muller of one block in float64: (r0 cos, r0 sin, r1 cos, r1 sin)."""
    u = [((w >> 8) + 0.5) / 2**24 for w in words]
    r0 = np.sqrt(-2 * np.log(u[0]))
    r1 = np.sqrt(-2 * np.log(u[2]))
    return [r0 * np.cos(2 * np.pi * u[1]), r0 * np.sin(2 * np.pi * u[1]),
            r1 * np.cos(2 * np.pi * u[3]), r1 * np.sin(2 * np.pi * u[3])]


@pytest.mark.parametrize(
    "seed,tag,sub,call",
    [(0, 2, 0, 0), (12345, 1, 3, 7), (2**40 + 17, 9, 255, 2**33 + 5), (MASK, 14, 1, MASK)],
)
def test_normal_and_uniform_follow_counter_layout(seed, tag, sub, call):
    for index in [0, 1, 2, 3, 4, 7, 1001, 2**32 * 4 + 6]:
        words = _block_words(seed, tag, sub, call, index >> 2)
        u_ref = ((words[index & 3] >> 8) + 0.5) / 2**24
        assert rng_mod.uniform_at(seed, tag, sub, call, index) == np.float32(u_ref)
        z_ref = _normal4_ref(words)[index & 3]
        z = rng_mod.normal_at(seed, tag, sub, call, index)
        # polynomial log/sincos in float32: relative error ~1e-6, plus |z| * 1e-6 near zero
        assert abs(z - z_ref) <= 1e-5 * (1 + abs(z_ref)), (index, z, z_ref)


def test_bulk_equals_single_draws():
    seed, tag, sub, call = 77, 2, 1, 5
    for base, n in [(0, 1), (0, 3), (0, 257), (8, 1000), (4 * 2**30, 13)]:
        bulk_n = rng_mod.normals(n, seed, tag, sub, call, base)
        bulk_u = rng_mod.uniforms(n, seed, tag, sub, call, base)
        single_n = np.array([rng_mod.normal_at(seed, tag, sub, call, base + i) for i in range(n)], np.float32)
        single_u = np.array([rng_mod.uniform_at(seed, tag, sub, call, base + i) for i in range(n)], np.float32)
        np.testing.assert_array_equal(bulk_n, single_n)
        np.testing.assert_array_equal(bulk_u, single_u)


def test_bulk_across_low_counter_word_wrap():
    # Block indices around 2^32 cross into the high counter word; bulk must match single draws.
    base = 4 * (2**32 - 3)
    bulk = rng_mod.normals(40, 3, 2, 0, 0, base)
    single = np.array([rng_mod.normal_at(3, 2, 0, 0, base + i) for i in range(40)], np.float32)
    np.testing.assert_array_equal(bulk, single)


def test_normal_moments():
    n = 400_000
    z = rng_mod.normals(n, 2024, 2, 0, 0).astype(np.float64)
    # mean: std 1/sqrt(n); variance: std sqrt(2/n); 5 sigma each
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    # skewness std sqrt(6/n), excess kurtosis std sqrt(24/n)
    assert abs(np.mean(z**3)) < 5 * np.sqrt(6 / n)
    assert abs(np.mean(z**4) - 3) < 5 * np.sqrt(96 / n)  # Var(z^4) = 105 - 9 = 96
    # tail fraction P(|z| > 2) = 0.0455; binomial std sqrt(p(1-p)/n)
    p = 0.04550026
    assert abs(np.mean(np.abs(z) > 2) - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_uniform_moments_and_range():
    n = 400_000
    u = rng_mod.uniforms(n, 99, 4, 0, 3).astype(np.float64)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    # Var(u) = 1/12; Var((u-1/2)^2) = 1/80 - 1/144
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt((1 / 80 - 1 / 144) / n)
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    # each bin ~ Binomial(n, 1/20)
    assert np.all(np.abs(counts - n / 20) < 5 * np.sqrt(n / 20 * 0.95))


def test_streams_are_uncorrelated():
    n = 200_000
    a = rng_mod.normals(n, 5, 2, 0, 0).astype(np.float64)
    others = [
        rng_mod.normals(n, 5, 1, 0, 0),  # other tag
        rng_mod.normals(n, 5, 2, 1, 0),  # other sub
        rng_mod.normals(n, 5, 2, 0, 1),  # other call
        rng_mod.normals(n, 6, 2, 0, 0),  # other seed
        rng_mod.normals(n, 5, 2, 0, 0, 4),  # shifted by one block
    ]
    for b in others:
        # correlation of independent samples: std 1/sqrt(n)
        assert abs(np.corrcoef(a, b.astype(np.float64))[0, 1]) < 5 / np.sqrt(n)


def test_output_noise_samples_are_standard_normal():
    # W = 0, rows with max|x| = 1 (noise-management scale 1), no ADC: y = out_noise * xi.
    N, M, K = 500, 200, 3
    W = np.zeros((M, K), np.float32)
    x = f32(np.tile([1.0, -0.5, 0.25], (N, 1)))
    y = rpu_base.tiles.io_mvm(W, x, io=quiet_io(out_noise=1.0), mapping=mapping(), seed=11, call=4)
    z = y.astype(np.float64).ravel()
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(np.mean(np.abs(z) > 2) - 0.04550026) < 5 * np.sqrt(0.0455 * 0.9545 / n)
    # same (seed, call) -> same noise; another call -> independent noise
    y2 = rpu_base.tiles.io_mvm(W, x, io=quiet_io(out_noise=1.0), mapping=mapping(), seed=11, call=4)
    np.testing.assert_array_equal(y, y2)
    y3 = rpu_base.tiles.io_mvm(W, x, io=quiet_io(out_noise=1.0), mapping=mapping(), seed=11, call=5)
    assert abs(np.corrcoef(z, y3.ravel())[0, 1]) < 5 / np.sqrt(n)
