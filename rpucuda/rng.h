// Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Parallel random
// numbers: as easy as 1, 2, 3").  Every random draw in rpucuda is a pure function of
// (seed, counter), so results do not depend on the thread count or on CPU vs CUDA.
//
// Counter layout used throughout rpucuda (one 128-bit counter per block of 4 numbers):
//   ctr[0], ctr[1] : element-block index (64 bit)
//   ctr[2]         : low 32 bits of the call index (forward/backward/update number)
//   ctr[3]         : tag (8 bit, what the number is for) | sub (8 bit, e.g. bound-management
//                    iteration) | high 16 bits of the call index
// The normal/uniform transforms below use only +,*,/, sqrt and polynomials, so CPU and CUDA
// give the same values up to float rounding.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RPU_HD __host__ __device__ __forceinline__
#else
#define RPU_HD inline
#endif

namespace rpu {

// What a random block is used for; part of the counter so streams never overlap.
enum RngTag : uint32_t {
  TAG_INP_NOISE = 1,
  TAG_OUT_NOISE = 2,
  TAG_W_NOISE = 3,
  TAG_INP_STO_ROUND = 4,
  TAG_OUT_STO_ROUND = 5,
  TAG_PULSE_X = 6,
  TAG_PULSE_D = 7,
  TAG_PULSE_C2C = 8,
  TAG_DTOD = 9,
  TAG_PROG_NOISE = 10,
  TAG_DRIFT_NU = 11,
  TAG_READ_NOISE = 12,
  TAG_MODIFIER = 13,
  TAG_UPDATE_ROUND = 14,
};

struct Philox4 {
  uint32_t v[4];
};

RPU_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t &hi, uint32_t &lo) {
  uint64_t p = (uint64_t)a * (uint64_t)b;
  hi = (uint32_t)(p >> 32);
  lo = (uint32_t)p;
}

// Philox4x32 with 10 rounds.
RPU_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, c0, hi0, lo0);
    philox_mulhilo(M1, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0;
    uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  Philox4 out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

// The block of 4 random words for (seed, tag, sub, call, block index).
RPU_HD Philox4 rng_block(uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call,
                         uint64_t block) {
  uint32_t c3 = (tag << 24) | ((sub & 0xFFu) << 16) | (uint32_t)((call >> 32) & 0xFFFFu);
  return philox4x32_10((uint32_t)block, (uint32_t)(block >> 32), (uint32_t)call, c3,
                       (uint32_t)seed, (uint32_t)(seed >> 32));
}

// Uniform in the open interval (0, 1), 24-bit resolution.
RPU_HD float u01(uint32_t x) { return ((float)(x >> 8) + 0.5f) * (1.0f / 16777216.0f); }

// Natural log for x in (0, 1], relative error ~1e-7.
RPU_HD float rpu_log(float x) {
  union {
    float f;
    uint32_t u;
  } b;
  b.f = x;
  int e = (int)((b.u >> 23) & 0xFFu) - 127;
  b.u = (b.u & 0x007FFFFFu) | 0x3F800000u;  // mantissa in [1, 2)
  float m = b.f;
  if (m > 1.41421356f) {
    m *= 0.5f;
    e += 1;
  }
  float t = (m - 1.0f) / (m + 1.0f);
  float t2 = t * t;
  float p = 2.0f * t * (1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9)))));
  return p + (float)e * 0.69314718056f;
}

// cos(2*pi*u) and sin(2*pi*u) for u in [0, 1).
RPU_HD void rpu_sincos_2pi(float u, float &c, float &s) {
  float v = 4.0f * u;
  float q = (float)(int)(v + 0.5f);  // nearest quadrant, 0..4
  float a = (v - q) * 1.57079632679f;  // in [-pi/4, pi/4]
  float a2 = a * a;
  float sa = a * (1.0f - a2 * (1.0f / 6 - a2 * (1.0f / 120 - a2 * (1.0f / 5040 - a2 * (1.0f / 362880)))));
  float ca = 1.0f - a2 * (0.5f - a2 * (1.0f / 24 - a2 * (1.0f / 720 - a2 * (1.0f / 40320))));
  int qi = ((int)q) & 3;
  float cc = (qi == 0) ? ca : (qi == 1) ? -sa : (qi == 2) ? -ca : sa;
  float ss = (qi == 0) ? sa : (qi == 1) ? ca : (qi == 2) ? -sa : -ca;
  c = cc;
  s = ss;
}

// Four standard normal samples from one Philox block (Box-Muller on two pairs).
RPU_HD void normal4(const Philox4 &b, float out[4]) {
  float r0 = sqrtf(-2.0f * rpu_log(u01(b.v[0])));
  float r1 = sqrtf(-2.0f * rpu_log(u01(b.v[2])));
  float c0, s0, c1, s1;
  rpu_sincos_2pi(u01(b.v[1]), c0, s0);
  rpu_sincos_2pi(u01(b.v[3]), c1, s1);
  out[0] = r0 * c0;
  out[1] = r0 * s0;
  out[2] = r1 * c1;
  out[3] = r1 * s1;
}

// The standard normal sample number `index` of a stream (4 per block).
RPU_HD float normal_at(uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call, uint64_t index) {
  float z[4];
  normal4(rng_block(seed, tag, sub, call, index >> 2), z);
  return z[index & 3];
}

// The uniform (0,1) sample number `index` of a stream (4 per block).
RPU_HD float uniform_at(uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call, uint64_t index) {
  Philox4 b = rng_block(seed, tag, sub, call, index >> 2);
  return u01(b.v[index & 3]);
}

#if !defined(__CUDACC__)
// Philox words of the blocks with counters (lo + l, hi, c2, c3), l = 0 .. n-1, n <= 64, with no
// carry out of lo: word k of block l in w[k][l] (entries up to round_up(n, 16) - 1 may be
// written).  AVX-512 / AVX2 / portable code chosen at run time; always the values of
// philox4x32_10().
void philox_lanes(uint32_t lo, int n, uint32_t hi, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                  uint32_t (*w)[64]);
// Bulk generation: the standard normals number base .. base+L-1 of a stream (base % 4 == 0),
// written to out.  Same values as normal_at(); the lanes are laid out so that the compiler
// vectorizes Philox and Box-Muller.
void fill_normal_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call,
                      uint64_t base);
// The same for uniforms in (0, 1).
void fill_uniform_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call,
                       uint64_t base);
// Many streams at once ("columns"): out[i * ld + c] = normal number base[c] + i of the stream,
// for i < L and c < n_cols (every base[c] % 4 == 0).  Same values as normal_at(); one row of
// out holds element i of every column, the layout of the convolution pipeline (io_conv.h),
// which draws a few numbers per output position for thousands of positions.
void fill_normal_columns(float *out, int64_t ld, int L, int n_cols, const uint64_t *base, uint64_t seed,
                         uint32_t tag, uint32_t sub, uint64_t call);
// The same for uniforms in (0, 1).
void fill_uniform_columns(float *out, int64_t ld, int L, int n_cols, const uint64_t *base, uint64_t seed,
                          uint32_t tag, uint32_t sub, uint64_t call);
// The instruction set the bulk generator, the IO pipeline's element loops and the analog product
// use: 0 = baseline x86-64 / portable code, 1 = AVX2 + FMA, 2 = AVX-512F; detected once.  Every
// level gives the same values bit for bit; the environment variable RPU_SIMD (read at load time)
// caps it: "generic" -> 0, "avx2" -> at most 1.
int simd_level();
#endif

}  // namespace rpu
