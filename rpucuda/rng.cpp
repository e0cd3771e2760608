// The float code must not be contracted into FMA (the AVX-512 variant would allow it): same
// options for every function of this file, so that the inline helpers of rng.h inline everywhere.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "rng.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

// Bulk generation is the hot path of the IO pipeline's noise (one normal per output per call).
// Philox has explicit AVX2 / AVX-512 integer kernels and the Box-Muller / uniform transforms
// are compiled twice (AVX2 and the baseline ISA) and picked at load time.  The float code uses
// only exactly rounded operations in the same order as the scalar functions of rng.h ("avx2"
// does not enable FMA contraction), so every version gives the values of normal_at() and
// uniform_at() bit for bit (tests/test_rng.py checks bulk against single draws).
// Define RPU_RNG_GENERIC to build only the portable code; the environment variable
// RPU_SIMD=generic (or avx2) caps the level at run time (for comparisons).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__) && \
    !defined(RPU_RNG_GENERIC)
#include <immintrin.h>
#define RPU_RNG_X86 1
#endif

namespace rpu {
namespace {

constexpr int kLanes = 64;  // blocks per batch (a multiple of 16)

// 4 words for the blocks with counters (lo + l, hi, c2, c3), l = 0 .. n-1 (no carry out of lo),
// as 4 word arrays of kLanes entries (entries n .. round_up(n, 16) - 1 may be written too).
void philox_lanes_generic(uint32_t lo, int n, uint32_t hi, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                          uint32_t (*w)[kLanes]) {
#pragma omp simd
  for (int l = 0; l < n; ++l) {
    Philox4 b = philox4x32_10(lo + (uint32_t)l, hi, c2, c3, k0, k1);
    w[0][l] = b.v[0];
    w[1][l] = b.v[1];
    w[2][l] = b.v[2];
    w[3][l] = b.v[3];
  }
}

// The same for per-lane counters (lo[l], hi[l], c2, c3), l = 0 .. n-1.
void philox_ctr_lanes_generic(const uint32_t *lo, const uint32_t *hi, int n, uint32_t c2, uint32_t c3, uint32_t k0,
                              uint32_t k1, uint32_t (*w)[kLanes]) {
#pragma omp simd
  for (int l = 0; l < n; ++l) {
    Philox4 b = philox4x32_10(lo[l], hi[l], c2, c3, k0, k1);
    w[0][l] = b.v[0];
    w[1][l] = b.v[1];
    w[2][l] = b.v[2];
    w[3][l] = b.v[3];
  }
}

#ifdef RPU_RNG_X86
// 8 blocks at a time (32x32 -> 64-bit products of the even and odd lanes with vpmuludq).
// The 10 rounds on 8 counters (x0 .. x3), results stored to w[.][l .. l+7].
__attribute__((target("avx2"))) inline __attribute__((always_inline)) void philox_rounds_avx2(
    __m256i x0, __m256i x1, __m256i x2, __m256i x3, uint32_t ka, uint32_t kb, uint32_t (*w)[kLanes], int l) {
  const __m256i M0 = _mm256_set1_epi32((int)0xD2511F53u), M1 = _mm256_set1_epi32((int)0xCD9E8D57u);
  for (int r = 0; r < 10; ++r) {
    const __m256i pe0 = _mm256_mul_epu32(x0, M0), po0 = _mm256_mul_epu32(_mm256_srli_epi64(x0, 32), M0);
    const __m256i pe1 = _mm256_mul_epu32(x2, M1), po1 = _mm256_mul_epu32(_mm256_srli_epi64(x2, 32), M1);
    const __m256i lo0 = _mm256_blend_epi32(pe0, _mm256_slli_epi64(po0, 32), 0xAA);
    const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(pe0, 32), po0, 0xAA);
    const __m256i lo1 = _mm256_blend_epi32(pe1, _mm256_slli_epi64(po1, 32), 0xAA);
    const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(pe1, 32), po1, 0xAA);
    x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32((int)ka));
    x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32((int)kb));
    x1 = lo1;
    x3 = lo0;
    ka += 0x9E3779B9u;
    kb += 0xBB67AE85u;
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i *>(w[0] + l), x0);
  _mm256_storeu_si256(reinterpret_cast<__m256i *>(w[1] + l), x1);
  _mm256_storeu_si256(reinterpret_cast<__m256i *>(w[2] + l), x2);
  _mm256_storeu_si256(reinterpret_cast<__m256i *>(w[3] + l), x3);
}

__attribute__((target("avx2"))) void philox_lanes_avx2(uint32_t lo, int n, uint32_t hi, uint32_t c2, uint32_t c3,
                                                         uint32_t k0, uint32_t k1, uint32_t (*w)[kLanes]) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int l = 0; l < n; l += 8)
    philox_rounds_avx2(_mm256_add_epi32(_mm256_set1_epi32((int)(lo + (uint32_t)l)), lane), _mm256_set1_epi32((int)hi),
                       _mm256_set1_epi32((int)c2), _mm256_set1_epi32((int)c3), k0, k1, w, l);
}

__attribute__((target("avx2"))) void philox_ctr_lanes_avx2(const uint32_t *lo, const uint32_t *hi, int n, uint32_t c2,
                                                             uint32_t c3, uint32_t k0, uint32_t k1,
                                                             uint32_t (*w)[kLanes]) {
  for (int l = 0; l < n; l += 8)
    philox_rounds_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(lo + l)),
                       _mm256_loadu_si256(reinterpret_cast<const __m256i *>(hi + l)), _mm256_set1_epi32((int)c2),
                       _mm256_set1_epi32((int)c3), k0, k1, w, l);
}

// kV vectors of 16 blocks at a time, side by side: kV independent dependency chains for the
// out-of-order core (4 ran 2% faster in the convolution pipeline than 1).  c0[v], c1[v]: the low
// counter words of vector v.  (GCC 12 warns about _mm512_undefined_epi32() inside its own
// header.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int kV>
__attribute__((target("avx512f"))) inline __attribute__((always_inline)) void philox_rounds_avx512(
    const __m512i *c0, const __m512i *c1, uint32_t c2, uint32_t c3, uint32_t ka, uint32_t kb, uint32_t (*w)[kLanes],
    int l) {
  const __m512i M0 = _mm512_set1_epi32((int)0xD2511F53u), M1 = _mm512_set1_epi32((int)0xCD9E8D57u);
  __m512i x0[kV], x1[kV], x2[kV], x3[kV];
  for (int v = 0; v < kV; ++v) {
    x0[v] = c0[v];
    x1[v] = c1[v];
    x2[v] = _mm512_set1_epi32((int)c2);
    x3[v] = _mm512_set1_epi32((int)c3);
  }
  for (int r = 0; r < 10; ++r) {
    const __m512i KA = _mm512_set1_epi32((int)ka), KB = _mm512_set1_epi32((int)kb);
    for (int v = 0; v < kV; ++v) {
      // 64-bit products of the even lanes (pe) and of the odd lanes (po, halves swapped down);
      // the low and high words put in place with one masked half-swap each
      const __m512i pe0 = _mm512_mul_epu32(x0[v], M0);
      const __m512i po0 = _mm512_mul_epu32(_mm512_shuffle_epi32(x0[v], _MM_PERM_CDAB), M0);
      const __m512i pe1 = _mm512_mul_epu32(x2[v], M1);
      const __m512i po1 = _mm512_mul_epu32(_mm512_shuffle_epi32(x2[v], _MM_PERM_CDAB), M1);
      const __m512i hi0 = _mm512_mask_shuffle_epi32(po0, 0x5555, pe0, _MM_PERM_CDAB);
      const __m512i hi1 = _mm512_mask_shuffle_epi32(po1, 0x5555, pe1, _MM_PERM_CDAB);
      x0[v] = _mm512_ternarylogic_epi32(hi1, x1[v], KA, 0x96);
      x2[v] = _mm512_ternarylogic_epi32(hi0, x3[v], KB, 0x96);
      x1[v] = _mm512_mask_shuffle_epi32(pe1, 0xAAAA, po1, _MM_PERM_CDAB);  // lo1
      x3[v] = _mm512_mask_shuffle_epi32(pe0, 0xAAAA, po0, _MM_PERM_CDAB);  // lo0
    }
    ka += 0x9E3779B9u;
    kb += 0xBB67AE85u;
  }
  for (int v = 0; v < kV; ++v) {
    _mm512_storeu_si512(w[0] + l + 16 * v, x0[v]);
    _mm512_storeu_si512(w[1] + l + 16 * v, x1[v]);
    _mm512_storeu_si512(w[2] + l + 16 * v, x2[v]);
    _mm512_storeu_si512(w[3] + l + 16 * v, x3[v]);
  }
}

__attribute__((target("avx512f"))) void philox_lanes_avx512(uint32_t lo, int n, uint32_t hi, uint32_t c2,
                                                              uint32_t c3, uint32_t k0, uint32_t k1,
                                                              uint32_t (*w)[kLanes]) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i a[4], b[4];
  for (int v = 0; v < 4; ++v) b[v] = _mm512_set1_epi32((int)hi);
  int l = 0;
  for (; l + 64 <= n; l += 64) {
    for (int v = 0; v < 4; ++v) a[v] = _mm512_add_epi32(_mm512_set1_epi32((int)(lo + (uint32_t)(l + 16 * v))), lane);
    philox_rounds_avx512<4>(a, b, c2, c3, k0, k1, w, l);
  }
  for (; l < n; l += 16) {
    a[0] = _mm512_add_epi32(_mm512_set1_epi32((int)(lo + (uint32_t)l)), lane);
    philox_rounds_avx512<1>(a, b, c2, c3, k0, k1, w, l);
  }
}

__attribute__((target("avx512f"))) void philox_ctr_lanes_avx512(const uint32_t *lo, const uint32_t *hi, int n,
                                                                  uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                                                                  uint32_t (*w)[kLanes]) {
  __m512i a[4], b[4];
  int l = 0;
  for (; l + 64 <= n; l += 64) {
    for (int v = 0; v < 4; ++v) {
      a[v] = _mm512_loadu_si512(lo + l + 16 * v);
      b[v] = _mm512_loadu_si512(hi + l + 16 * v);
    }
    philox_rounds_avx512<4>(a, b, c2, c3, k0, k1, w, l);
  }
  for (; l < n; l += 16) {
    a[0] = _mm512_loadu_si512(lo + l);
    b[0] = _mm512_loadu_si512(hi + l);
    philox_rounds_avx512<1>(a, b, c2, c3, k0, k1, w, l);
  }
}
#pragma GCC diagnostic pop
#endif

// 0 = portable code, 1 = AVX2, 2 = AVX-512 (Philox only; the float code is AVX2 there too).
int detect_level() {
#ifdef RPU_RNG_X86
  __builtin_cpu_init();  // this may run from a static initializer, before libgcc's own
  int level = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    level = __builtin_cpu_supports("avx512f") ? 2 : 1;
  const char *env = std::getenv("RPU_SIMD");  // caps the level (for comparisons)
  if (env != nullptr && std::strcmp(env, "generic") == 0) level = 0;
  if (env != nullptr && std::strcmp(env, "avx2") == 0) level = std::min(level, 1);
  return level;
#else
  return 0;
#endif
}
const int g_level = detect_level();


// Box-Muller of blocks 0 .. n-1 into out[4 l + t] (the operations of normal4()).
inline __attribute__((always_inline)) void box_muller_body(const uint32_t (*w)[kLanes], int n, float *__restrict out) {
#pragma omp simd
  for (int l = 0; l < n; ++l) {
    float r0 = sqrtf(-2.0f * rpu_log(u01(w[0][l])));
    float r1 = sqrtf(-2.0f * rpu_log(u01(w[2][l])));
    float c0, s0, c1, s1;
    rpu_sincos_2pi(u01(w[1][l]), c0, s0);
    rpu_sincos_2pi(u01(w[3][l]), c1, s1);
    out[4 * l + 0] = r0 * c0;
    out[4 * l + 1] = r0 * s0;
    out[4 * l + 2] = r1 * c1;
    out[4 * l + 3] = r1 * s1;
  }
}

inline __attribute__((always_inline)) void uniform_body(const uint32_t (*w)[kLanes], int n, float *__restrict out) {
#pragma omp simd
  for (int l = 0; l < n; ++l) {
    out[4 * l + 0] = u01(w[0][l]);
    out[4 * l + 1] = u01(w[1][l]);
    out[4 * l + 2] = u01(w[2][l]);
    out[4 * l + 3] = u01(w[3][l]);
  }
}

// The same into four separate rows: o[t][l] = normal t of block l (columns layout).
inline __attribute__((always_inline)) void box_muller_planar_body(const uint32_t (*w)[kLanes], int n,
                                                                  float *__restrict o0, float *__restrict o1,
                                                                  float *__restrict o2, float *__restrict o3) {
#pragma omp simd
  for (int l = 0; l < n; ++l) {
    float r0 = sqrtf(-2.0f * rpu_log(u01(w[0][l])));
    float r1 = sqrtf(-2.0f * rpu_log(u01(w[2][l])));
    float c0, s0, c1, s1;
    rpu_sincos_2pi(u01(w[1][l]), c0, s0);
    rpu_sincos_2pi(u01(w[3][l]), c1, s1);
    o0[l] = r0 * c0;
    o1[l] = r0 * s0;
    o2[l] = r1 * c1;
    o3[l] = r1 * s1;
  }
}

inline __attribute__((always_inline)) void uniform_planar_body(const uint32_t (*w)[kLanes], int n,
                                                               float *__restrict o0, float *__restrict o1,
                                                               float *__restrict o2, float *__restrict o3) {
#pragma omp simd
  for (int l = 0; l < n; ++l) {
    o0[l] = u01(w[0][l]);
    o1[l] = u01(w[1][l]);
    o2[l] = u01(w[2][l]);
    o3[l] = u01(w[3][l]);
  }
}

void box_muller_generic(const uint32_t (*w)[kLanes], int n, float *out) { box_muller_body(w, n, out); }
void box_muller_planar_generic(const uint32_t (*w)[kLanes], int n, float *o0, float *o1, float *o2, float *o3) {
  box_muller_planar_body(w, n, o0, o1, o2, o3);
}
void uniform_planar_generic(const uint32_t (*w)[kLanes], int n, float *o0, float *o1, float *o2, float *o3) {
  uniform_planar_body(w, n, o0, o1, o2, o3);
}
void uniform_generic(const uint32_t (*w)[kLanes], int n, float *out) { uniform_body(w, n, out); }
#ifdef RPU_RNG_X86
__attribute__((target("avx2"))) void box_muller_avx2(const uint32_t (*w)[kLanes], int n, float *out) {
  box_muller_body(w, n, out);
}
__attribute__((target("avx512f,avx512dq"))) void box_muller_avx512(const uint32_t (*w)[kLanes], int n, float *out) {
  box_muller_body(w, n, out);
}
__attribute__((target("avx2"))) void uniform_avx2(const uint32_t (*w)[kLanes], int n, float *out) {
  uniform_body(w, n, out);
}
__attribute__((target("avx2"))) void box_muller_planar_avx2(const uint32_t (*w)[kLanes], int n, float *o0, float *o1,
                                                              float *o2, float *o3) {
  box_muller_planar_body(w, n, o0, o1, o2, o3);
}
__attribute__((target("avx512f,avx512dq"))) void box_muller_planar_avx512(const uint32_t (*w)[kLanes], int n,
                                                                            float *o0, float *o1, float *o2, float *o3) {
  box_muller_planar_body(w, n, o0, o1, o2, o3);
}
__attribute__((target("avx2"))) void uniform_planar_avx2(const uint32_t (*w)[kLanes], int n, float *o0, float *o1,
                                                           float *o2, float *o3) {
  uniform_planar_body(w, n, o0, o1, o2, o3);
}
#endif

template <bool kNormal>
inline void transform(const uint32_t (*w)[kLanes], int n, float *out) {
#ifdef RPU_RNG_X86
  if (kNormal && g_level == 2) return box_muller_avx512(w, n, out);
  if (g_level >= 1) return kNormal ? box_muller_avx2(w, n, out) : uniform_avx2(w, n, out);
#endif
  return kNormal ? box_muller_generic(w, n, out) : uniform_generic(w, n, out);
}

template <bool kNormal>
void fill_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call, uint64_t base) {
  const uint32_t c3 = (tag << 24) | ((sub & 0xFFu) << 16) | (uint32_t)((call >> 32) & 0xFFFFu);
  const uint32_t c2 = (uint32_t)call, k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  alignas(64) uint32_t w[4][kLanes];
  alignas(64) float tmp[4 * kLanes];
  int64_t done = 0;
  uint64_t block = base >> 2;
  while (done < L) {
    int n = (int)std::min<int64_t>(kLanes, (L - done + 3) / 4);
    // keep the low counter word from wrapping inside one batch
    uint64_t room = 0x100000000ull - (block & 0xFFFFFFFFull);
    if ((uint64_t)n > room) n = (int)room;
    // Short runs: compute whole vectors of lanes (the extra lanes are discarded).  A remainder
    // shorter than the vector width would otherwise run the scalar loop epilogue, ~10x slower
    // per number; every used lane has the same value either way.
    int nv = (n + 15) & ~15;
    if ((uint64_t)nv > room) nv = n;
    philox_lanes((uint32_t)block, nv, (uint32_t)(block >> 32), c2, c3, k0, k1, w);
    const int64_t take = std::min<int64_t>(4 * (int64_t)n, L - done);
    if (take == 4 * (int64_t)nv) {
      transform<kNormal>(w, nv, out + done);
    } else {
      transform<kNormal>(w, nv, tmp);
      std::memcpy(out + done, tmp, sizeof(float) * take);
    }
    done += take;
    block += n;
  }
}

template <bool kNormal>
inline void transform_planar(const uint32_t (*w)[kLanes], int n, float *o0, float *o1, float *o2, float *o3) {
#ifdef RPU_RNG_X86
  if (kNormal && g_level == 2) return box_muller_planar_avx512(w, n, o0, o1, o2, o3);
  if (g_level >= 1)
    return kNormal ? box_muller_planar_avx2(w, n, o0, o1, o2, o3) : uniform_planar_avx2(w, n, o0, o1, o2, o3);
#endif
  return kNormal ? box_muller_planar_generic(w, n, o0, o1, o2, o3) : uniform_planar_generic(w, n, o0, o1, o2, o3);
}

void philox_ctr_lanes(const uint32_t *lo, const uint32_t *hi, int n, uint32_t c2, uint32_t c3, uint32_t k0,
                      uint32_t k1, uint32_t (*w)[kLanes]) {
#ifdef RPU_RNG_X86
  if (g_level == 2) return philox_ctr_lanes_avx512(lo, hi, n, c2, c3, k0, k1, w);
  if (g_level == 1) return philox_ctr_lanes_avx2(lo, hi, n, c2, c3, k0, k1, w);
#endif
  philox_ctr_lanes_generic(lo, hi, n, c2, c3, k0, k1, w);
}

// Columns c0 .. c0+63 at a time: the lanes are columns, block j of every column at once.
template <bool kNormal>
void fill_columns(float *out, int64_t ld, int L, int n_cols, const uint64_t *base, uint64_t seed, uint32_t tag,
                  uint32_t sub, uint64_t call) {
  const uint32_t c3 = (tag << 24) | ((sub & 0xFFu) << 16) | (uint32_t)((call >> 32) & 0xFFFFu);
  const uint32_t c2 = (uint32_t)call, k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  alignas(64) uint32_t w[4][kLanes];
  alignas(64) uint32_t lo[kLanes], hi[kLanes];
  alignas(64) uint64_t block0[kLanes];
  alignas(64) float tmp[4][kLanes];
  for (int c0 = 0; c0 < n_cols; c0 += kLanes) {
    const int n = std::min(kLanes, n_cols - c0);
    const int nv = (n + 15) & ~15;  // whole vectors (the extra lanes repeat the last column)
    for (int l = 0; l < nv; ++l) block0[l] = base[c0 + std::min(l, n - 1)] >> 2;
    for (int j = 0; 4 * j < L; ++j) {
#pragma omp simd
      for (int l = 0; l < nv; ++l) {
        const uint64_t block = block0[l] + (uint64_t)j;
        lo[l] = (uint32_t)block;
        hi[l] = (uint32_t)(block >> 32);
      }
      philox_ctr_lanes(lo, hi, nv, c2, c3, k0, k1, w);
      float *o[4];
      const bool direct = n == nv && 4 * j + 4 <= L;
      for (int t = 0; t < 4; ++t) o[t] = direct ? out + (int64_t)(4 * j + t) * ld + c0 : tmp[t];
      transform_planar<kNormal>(w, nv, o[0], o[1], o[2], o[3]);
      if (!direct)
        for (int t = 0; t < 4 && 4 * j + t < L; ++t)
          std::memcpy(out + (int64_t)(4 * j + t) * ld + c0, tmp[t], sizeof(float) * n);
    }
  }
}

}  // namespace

void philox_lanes(uint32_t lo, int n, uint32_t hi, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                         uint32_t (*w)[64]) {
#ifdef RPU_RNG_X86
  if (g_level == 2) return philox_lanes_avx512(lo, n, hi, c2, c3, k0, k1, w);
  if (g_level == 1) return philox_lanes_avx2(lo, n, hi, c2, c3, k0, k1, w);
#endif
  philox_lanes_generic(lo, n, hi, c2, c3, k0, k1, w);
}

int simd_level() { return g_level; }

void fill_normal_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call,
                      uint64_t base) {
  fill_bulk<true>(out, L, seed, tag, sub, call, base);
}

void fill_uniform_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call,
                       uint64_t base) {
  fill_bulk<false>(out, L, seed, tag, sub, call, base);
}

void fill_normal_columns(float *out, int64_t ld, int L, int n_cols, const uint64_t *base, uint64_t seed,
                         uint32_t tag, uint32_t sub, uint64_t call) {
  fill_columns<true>(out, ld, L, n_cols, base, seed, tag, sub, call);
}

void fill_uniform_columns(float *out, int64_t ld, int L, int n_cols, const uint64_t *base, uint64_t seed,
                          uint32_t tag, uint32_t sub, uint64_t call) {
  fill_columns<false>(out, ld, L, n_cols, base, seed, tag, sub, call);
}

}  // namespace rpu
