// The analog product with a fixed summation order (see analog_gemm.h).  Kernels for AVX-512F and
// AVX2+FMA and a portable one (std::fma), picked at run time by simd_level() (rng.h); all give
// the values of analog_dot16_ref / analog_chain_ref bit for bit: they perform the same fused
// multiply-adds and additions in the same order, only on several elements at once.
// (No contraction of a separate multiply and add anywhere: see the pragma.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "analog_gemm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "rng.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__) && \
    !defined(RPU_IO_GENERIC)
#include <immintrin.h>
#define RPU_AG_X86 1
#endif

#if defined(__GNUC__)
#define RPU_AG_AI inline __attribute__((always_inline))
#else
#define RPU_AG_AI inline
#endif

namespace rpu {

float analog_dot16_ref(const float *x, const float *w, int k) {
  float s[16];
  for (int l = 0; l < 16; ++l) s[l] = 0.0f;
  for (int i = 0; i < k; ++i) s[i & 15] = std::fma(x[i], w[i], s[i & 15]);
  for (int l = 0; l < 8; ++l) s[l] += s[l + 8];
  for (int l = 0; l < 4; ++l) s[l] += s[l + 4];
  for (int l = 0; l < 2; ++l) s[l] += s[l + 2];
  return s[0] + s[1];
}

float analog_chain_ref(const float *x, const float *w, int ldw, int k) {
  float acc = 0.0f;
  for (int i = 0; i < k; ++i) acc = std::fma(x[i], w[(int64_t)i * ldw], acc);
  return acc;
}

namespace {

// ---- portable ---------------------------------------------------------------------------------

void gemm_nt_generic(int m, int n, int k, const float *X, int ldx, const float *W, int ldw, float *C, int ldc) {
  for (int r = 0; r < m; ++r)
    for (int o = 0; o < n; ++o) C[(int64_t)r * ldc + o] = analog_dot16_ref(X + (int64_t)r * ldx, W + (int64_t)o * ldw, k);
}

void gemm_nn_generic(int m, int n, int k, const float *X, int ldx, const float *W, int ldw, float *C, int ldc) {
  for (int r = 0; r < m; ++r) {
    float *c = C + (int64_t)r * ldc;
    const float *x = X + (int64_t)r * ldx;
    for (int o = 0; o < n; ++o) c[o] = 0.0f;
    for (int i = 0; i < k; ++i) {
      const float xi = x[i];
      const float *w = W + (int64_t)i * ldw;
      for (int o = 0; o < n; ++o) c[o] = std::fma(xi, w[o], c[o]);
    }
  }
}

// Columns layout: each column and each weight row gathered, then the scalar definition.
void gemm_columns_generic(int m, int n, int k, const float *X, int ldx, const float *WT, int ldwt, float *C,
                          int ldc) {
  std::vector<float> x(k), w((size_t)n * k);
  for (int o = 0; o < n; ++o)
    for (int i = 0; i < k; ++i) w[(size_t)o * k + i] = WT[(int64_t)i * ldwt + o];
  for (int r = 0; r < m; ++r) {
    for (int i = 0; i < k; ++i) x[i] = X[(int64_t)i * ldx + r];
    for (int o = 0; o < n; ++o) C[(int64_t)o * ldc + r] = analog_dot16_ref(x.data(), w.data() + (size_t)o * k, k);
  }
}

#ifdef RPU_AG_X86
// (GCC 12 warns about the _mm512_undefined_*() inside its own intrinsics header.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// ---- AVX-512F ---------------------------------------------------------------------------------

// The tree of analog_dot16_ref on the 16 lanes of v.
__attribute__((target("avx512f"))) RPU_AG_AI float hsum16_512(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE));  // lanes 8-15
  const __m256 s8 = _mm256_add_ps(lo, hi);                                                // l + l+8
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));  // l + l+4
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                                // l + l+2
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));                        // 0 + 1
}

// Forward block of MR rows x NR outputs: 16-lane partial sums over k, then the tree.
template <int MR, int NR>
__attribute__((target("avx512f"))) RPU_AG_AI void nt_block_512(int k, const float *X, int ldx, const float *W,
                                                               int ldw, float *C, int ldc) {
  __m512 acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int o = 0; o < NR; ++o) acc[r][o] = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 a[MR], b[NR];
    for (int r = 0; r < MR; ++r) a[r] = _mm512_loadu_ps(X + (int64_t)r * ldx + i);
    for (int o = 0; o < NR; ++o) b[o] = _mm512_loadu_ps(W + (int64_t)o * ldw + i);
    for (int r = 0; r < MR; ++r)
      for (int o = 0; o < NR; ++o) acc[r][o] = _mm512_fmadd_ps(a[r], b[o], acc[r][o]);
  }
  if (i < k) {
    // Missing lanes add fma(0, 0, s) = s (s is never -0: it starts at +0 and a sum of +-x is +0).
    const __mmask16 mk = (__mmask16)((1u << (k - i)) - 1u);
    __m512 a[MR], b[NR];
    for (int r = 0; r < MR; ++r) a[r] = _mm512_maskz_loadu_ps(mk, X + (int64_t)r * ldx + i);
    for (int o = 0; o < NR; ++o) b[o] = _mm512_maskz_loadu_ps(mk, W + (int64_t)o * ldw + i);
    for (int r = 0; r < MR; ++r)
      for (int o = 0; o < NR; ++o) acc[r][o] = _mm512_fmadd_ps(a[r], b[o], acc[r][o]);
  }
  if (MR == 4 && NR == 4) {
    // The same tree for the 16 accumulators at once (a transpose with additions).  v = 4 r + o.
    const __m512 *v = &acc[0][0];
    __m512 t[8], u[4], w[2];
    for (int p = 0; p < 8; ++p)  // l + l+8: [v(2p) 0-7 | v(2p+1) 0-7]
      t[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                           _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
    for (int p = 0; p < 4; ++p)  // l + l+4: 128-bit chunk c holds v(4p + c) 0-3
      u[p] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * p], t[2 * p + 1], 0x88),
                           _mm512_shuffle_f32x4(t[2 * p], t[2 * p + 1], 0xDD));
    for (int p = 0; p < 2; ++p) {  // l + l+2: chunk c = [v(8p+c) 0-1, v(8p+4+c) 0-1]
      const __m512d a = _mm512_castps_pd(u[2 * p]), b = _mm512_castps_pd(u[2 * p + 1]);
      w[p] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // 0 + 1: chunk c = [v(c), v(4+c), v(8+c), v(12+c)] = column c of rows 0..3
    const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512 g = _mm512_permutexvar_ps(idx, f);  // chunk r = row r, columns 0..3
    _mm_storeu_ps(C, _mm512_castps512_ps128(g));
    _mm_storeu_ps(C + ldc, _mm512_extractf32x4_ps(g, 1));
    _mm_storeu_ps(C + 2 * (int64_t)ldc, _mm512_extractf32x4_ps(g, 2));
    _mm_storeu_ps(C + 3 * (int64_t)ldc, _mm512_extractf32x4_ps(g, 3));
  } else {
    for (int r = 0; r < MR; ++r)
      for (int o = 0; o < NR; ++o) C[(int64_t)r * ldc + o] = hsum16_512(acc[r][o]);
  }
}

template <int MR>
__attribute__((target("avx512f"))) RPU_AG_AI void nt_rows_512(int n, int k, const float *X, int ldx, const float *W,
                                                              int ldw, float *C, int ldc) {
  int o = 0;
  for (; o + 4 <= n; o += 4) nt_block_512<MR, 4>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc);
  switch (n - o) {
    case 3: nt_block_512<MR, 3>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc); break;
    case 2: nt_block_512<MR, 2>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc); break;
    case 1: nt_block_512<MR, 1>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc); break;
    default: break;
  }
}

__attribute__((target("avx512f"))) void gemm_nt_avx512(int m, int n, int k, const float *X, int ldx, const float *W,
                                                        int ldw, float *C, int ldc) {
  int r = 0;
  if (m == 1) {
    // GEMV: 8 outputs at a time (more independent chains for the loads of W).
    int o = 0;
    for (; o + 8 <= n; o += 8) nt_block_512<1, 8>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc);
    nt_rows_512<1>(n - o, k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc);
    return;
  }
  // Blocks of 4 rows, and 64 outputs at a time (their rows of W stay in L1 for all row blocks).
  constexpr int kOutBlock = 64;
  for (int o0 = 0; o0 < n; o0 += kOutBlock) {
    const int no = std::min(kOutBlock, n - o0);
    const float *Wo = W + (int64_t)o0 * ldw;
    for (r = 0; r + 4 <= m; r += 4) nt_rows_512<4>(no, k, X + (int64_t)r * ldx, ldx, Wo, ldw, C + (int64_t)r * ldc + o0, ldc);
    const float *Xr = X + (int64_t)r * ldx;
    float *Cr = C + (int64_t)r * ldc + o0;
    switch (m - r) {
      case 3: nt_rows_512<3>(no, k, Xr, ldx, Wo, ldw, Cr, ldc); break;
      case 2: nt_rows_512<2>(no, k, Xr, ldx, Wo, ldw, Cr, ldc); break;
      case 1: nt_rows_512<1>(no, k, Xr, ldx, Wo, ldw, Cr, ldc); break;
      default: break;
    }
  }
}

// Columns layout: RV vectors of 16 columns x NO outputs.  Lane l of the 16 partial sums is the
// fma chain over i = l, l + 16, ... (one register per column vector and output); the chains of
// lanes 0-7 are kept in S, those of lanes 8-15 are added to them (s[l] += s[l + 8]) and the rest
// of the tree follows, all lane-wise: no horizontal operation.  `last` masks the columns of the
// last vector (the other lanes are computed from zeros and not stored).
template <int RV, int NO>
__attribute__((target("avx512f"))) RPU_AG_AI void cols_block_512(int k, const float *X, int ldx, const float *WT,
                                                                 int ldwt, float *C, int ldc, __mmask16 last) {
  alignas(64) float S[8][RV][NO][16];
  for (int l = 0; l < 16; ++l) {
    __m512 acc[RV][NO];
    for (int v = 0; v < RV; ++v)
      for (int o = 0; o < NO; ++o) acc[v][o] = _mm512_setzero_ps();
    for (int i = l; i < k; i += 16) {
      __m512 x[RV];
      for (int v = 0; v < RV; ++v)
        x[v] = v == RV - 1 ? _mm512_maskz_loadu_ps(last, X + (int64_t)i * ldx + 16 * v)
                           : _mm512_loadu_ps(X + (int64_t)i * ldx + 16 * v);
      const float *wi = WT + (int64_t)i * ldwt;  // the NO weights of input i, side by side
      for (int o = 0; o < NO; ++o) {
        const __m512 w = _mm512_set1_ps(wi[o]);
        for (int v = 0; v < RV; ++v) acc[v][o] = _mm512_fmadd_ps(x[v], w, acc[v][o]);
      }
    }
    for (int v = 0; v < RV; ++v)
      for (int o = 0; o < NO; ++o) {
        if (l < 8) _mm512_store_ps(S[l][v][o], acc[v][o]);
        else _mm512_store_ps(S[l - 8][v][o], _mm512_add_ps(_mm512_load_ps(S[l - 8][v][o]), acc[v][o]));
      }
  }
  for (int v = 0; v < RV; ++v)
    for (int o = 0; o < NO; ++o) {
      __m512 t[4];
      for (int l = 0; l < 4; ++l) t[l] = _mm512_add_ps(_mm512_load_ps(S[l][v][o]), _mm512_load_ps(S[l + 4][v][o]));
      for (int l = 0; l < 2; ++l) t[l] = _mm512_add_ps(t[l], t[l + 2]);
      const __m512 y = _mm512_add_ps(t[0], t[1]);
      float *c = C + (int64_t)o * ldc + 16 * v;
      if (v == RV - 1) _mm512_mask_storeu_ps(c, last, y);
      else _mm512_storeu_ps(c, y);
    }
}

template <int RV>
__attribute__((target("avx512f"))) RPU_AG_AI void cols_outputs_512(int n, int k, const float *X, int ldx,
                                                                   const float *WT, int ldwt, float *C, int ldc,
                                                                   __mmask16 last) {
  int o = 0;
  for (; o + 8 <= n; o += 8) cols_block_512<RV, 8>(k, X, ldx, WT + o, ldwt, C + (int64_t)o * ldc, ldc, last);
  const float *Wo = WT + o;
  float *Co = C + (int64_t)o * ldc;
  switch (n - o) {
    case 7: cols_block_512<RV, 7>(k, X, ldx, Wo, ldwt, Co, ldc, last); break;
    case 6: cols_block_512<RV, 6>(k, X, ldx, Wo, ldwt, Co, ldc, last); break;
    case 5: cols_block_512<RV, 5>(k, X, ldx, Wo, ldwt, Co, ldc, last); break;
    case 4: cols_block_512<RV, 4>(k, X, ldx, Wo, ldwt, Co, ldc, last); break;
    case 3: cols_block_512<RV, 3>(k, X, ldx, Wo, ldwt, Co, ldc, last); break;
    case 2: cols_block_512<RV, 2>(k, X, ldx, Wo, ldwt, Co, ldc, last); break;
    case 1: cols_block_512<RV, 1>(k, X, ldx, Wo, ldwt, Co, ldc, last); break;
    default: break;
  }
}

__attribute__((target("avx512f"))) void gemm_columns_avx512(int m, int n, int k, const float *X, int ldx,
                                                             const float *WT, int ldwt, float *C, int ldc) {
  int r = 0;
  for (; r + 32 <= m; r += 32) cols_outputs_512<2>(n, k, X + r, ldx, WT, ldwt, C + r, ldc, 0xFFFF);
  const int rest = m - r;
  if (rest > 16)
    cols_outputs_512<2>(n, k, X + r, ldx, WT, ldwt, C + r, ldc, (__mmask16)((1u << (rest - 16)) - 1u));
  else if (rest > 0)
    cols_outputs_512<1>(n, k, X + r, ldx, WT, ldwt, C + r, ldc, (__mmask16)(rest == 16 ? 0xFFFFu : (1u << rest) - 1u));
}

// Backward block of MR rows x (up to) 32 outputs: one fma chain per output over k.
template <int MR>
__attribute__((target("avx512f"))) RPU_AG_AI void nn_block_512(int nc, int k, const float *X, int ldx, const float *W,
                                                               int ldw, float *C, int ldc) {
  __m512 acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  const __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xFFFFu : ((1u << nc) - 1u));
  const __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xFFFFu : (nc <= 16 ? 0u : ((1u << (nc - 16)) - 1u)));
  if (nc == 32) {
    for (int i = 0; i < k; ++i) {
      const float *w = W + (int64_t)i * ldw;
      const __m512 b0 = _mm512_loadu_ps(w), b1 = _mm512_loadu_ps(w + 16);
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(X[(int64_t)r * ldx + i]);
        acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
      }
    }
  } else {
    for (int i = 0; i < k; ++i) {
      const float *w = W + (int64_t)i * ldw;
      const __m512 b0 = _mm512_maskz_loadu_ps(m0, w), b1 = _mm512_maskz_loadu_ps(m1, w + 16);
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(X[(int64_t)r * ldx + i]);
        acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(C + (int64_t)r * ldc, m0, acc0[r]);
    _mm512_mask_storeu_ps(C + (int64_t)r * ldc + 16, m1, acc1[r]);
  }
}

// One row (GEMV), 256 outputs at a time: the rows of W are streamed contiguously.
__attribute__((target("avx512f"))) void gemv_nn_avx512(int n, int k, const float *x, const float *W, int ldw,
                                                        float *c) {
  constexpr int kV = 16;  // accumulators of 16 outputs
  int o = 0;
  for (; o + kV * 16 <= n; o += kV * 16) {
    __m512 acc[kV];
    for (int v = 0; v < kV; ++v) acc[v] = _mm512_setzero_ps();
    for (int i = 0; i < k; ++i) {
      const float *w = W + (int64_t)i * ldw + o;
      const __m512 a = _mm512_set1_ps(x[i]);
      for (int v = 0; v < kV; ++v) acc[v] = _mm512_fmadd_ps(a, _mm512_loadu_ps(w + 16 * v), acc[v]);
    }
    for (int v = 0; v < kV; ++v) _mm512_storeu_ps(c + o + 16 * v, acc[v]);
  }
  for (; o < n; o += 32) nn_block_512<1>(std::min(32, n - o), k, x, k, W + o, ldw, c + o, 0);
}

__attribute__((target("avx512f"))) void gemm_nn_avx512(int m, int n, int k, const float *X, int ldx, const float *W,
                                                        int ldw, float *C, int ldc) {
  if (m == 1) return gemv_nn_avx512(n, k, X, W, ldw, C);
  for (int o = 0; o < n; o += 32) {
    const int nc = std::min(32, n - o);
    int r = 0;
    for (; r + 8 <= m; r += 8) nn_block_512<8>(nc, k, X + (int64_t)r * ldx, ldx, W + o, ldw, C + (int64_t)r * ldc + o, ldc);
    const float *Xr = X + (int64_t)r * ldx;
    float *Cr = C + (int64_t)r * ldc + o;
    switch (m - r) {
      case 7: nn_block_512<7>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 6: nn_block_512<6>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 5: nn_block_512<5>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 4: nn_block_512<4>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 3: nn_block_512<3>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 2: nn_block_512<2>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 1: nn_block_512<1>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      default: break;
    }
  }
}

// ---- AVX2 + FMA -------------------------------------------------------------------------------

// 16 lanes as two registers: lo = lanes 0-7, hi = lanes 8-15.
__attribute__((target("avx2,fma"))) RPU_AG_AI float hsum16_256(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);                                                // l + l+8
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));  // l + l+4
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                                // l + l+2
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));                        // 0 + 1
}

__attribute__((target("avx2,fma"))) RPU_AG_AI __m256i tail_mask_256(int cnt) {  // first cnt lanes (0..8)
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), lane);
}

template <int MR, int NR>
__attribute__((target("avx2,fma"))) RPU_AG_AI void nt_block_256(int k, const float *X, int ldx, const float *W,
                                                                int ldw, float *C, int ldc) {
  __m256 lo[MR][NR], hi[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int o = 0; o < NR; ++o) lo[r][o] = hi[r][o] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= k; i += 16) {
    __m256 b_lo[NR], b_hi[NR];
    for (int o = 0; o < NR; ++o) {
      b_lo[o] = _mm256_loadu_ps(W + (int64_t)o * ldw + i);
      b_hi[o] = _mm256_loadu_ps(W + (int64_t)o * ldw + i + 8);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 a_lo = _mm256_loadu_ps(X + (int64_t)r * ldx + i), a_hi = _mm256_loadu_ps(X + (int64_t)r * ldx + i + 8);
      for (int o = 0; o < NR; ++o) {
        lo[r][o] = _mm256_fmadd_ps(a_lo, b_lo[o], lo[r][o]);
        hi[r][o] = _mm256_fmadd_ps(a_hi, b_hi[o], hi[r][o]);
      }
    }
  }
  if (i < k) {
    const __m256i m_lo = tail_mask_256(std::min(8, k - i)), m_hi = tail_mask_256(std::max(0, k - i - 8));
    __m256 b_lo[NR], b_hi[NR];
    for (int o = 0; o < NR; ++o) {
      b_lo[o] = _mm256_maskload_ps(W + (int64_t)o * ldw + i, m_lo);
      b_hi[o] = _mm256_maskload_ps(W + (int64_t)o * ldw + i + 8, m_hi);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 a_lo = _mm256_maskload_ps(X + (int64_t)r * ldx + i, m_lo);
      const __m256 a_hi = _mm256_maskload_ps(X + (int64_t)r * ldx + i + 8, m_hi);
      for (int o = 0; o < NR; ++o) {
        lo[r][o] = _mm256_fmadd_ps(a_lo, b_lo[o], lo[r][o]);
        hi[r][o] = _mm256_fmadd_ps(a_hi, b_hi[o], hi[r][o]);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int o = 0; o < NR; ++o) C[(int64_t)r * ldc + o] = hsum16_256(lo[r][o], hi[r][o]);
}

template <int MR>
__attribute__((target("avx2,fma"))) RPU_AG_AI void nt_rows_256(int n, int k, const float *X, int ldx, const float *W,
                                                               int ldw, float *C, int ldc) {
  int o = 0;
  for (; o + 3 <= n; o += 3) nt_block_256<MR, 3>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc);
  switch (n - o) {
    case 2: nt_block_256<MR, 2>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc); break;
    case 1: nt_block_256<MR, 1>(k, X, ldx, W + (int64_t)o * ldw, ldw, C + o, ldc); break;
    default: break;
  }
}

__attribute__((target("avx2,fma"))) void gemm_nt_avx2(int m, int n, int k, const float *X, int ldx, const float *W,
                                                       int ldw, float *C, int ldc) {
  constexpr int kOutBlock = 48;
  for (int o0 = 0; o0 < n; o0 += kOutBlock) {
    const int no = std::min(kOutBlock, n - o0);
    const float *Wo = W + (int64_t)o0 * ldw;
    int r = 0;
    for (; r + 2 <= m; r += 2) nt_rows_256<2>(no, k, X + (int64_t)r * ldx, ldx, Wo, ldw, C + (int64_t)r * ldc + o0, ldc);
    if (r < m) nt_rows_256<1>(no, k, X + (int64_t)r * ldx, ldx, Wo, ldw, C + (int64_t)r * ldc + o0, ldc);
  }
}

template <int MR>
__attribute__((target("avx2,fma"))) RPU_AG_AI void nn_block_256(int nc, int k, const float *X, int ldx, const float *W,
                                                                int ldw, float *C, int ldc) {
  __m256 acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  const __m256i m0 = tail_mask_256(std::min(8, nc)), m1 = tail_mask_256(std::max(0, nc - 8));
  if (nc == 16) {
    for (int i = 0; i < k; ++i) {
      const float *w = W + (int64_t)i * ldw;
      const __m256 b0 = _mm256_loadu_ps(w), b1 = _mm256_loadu_ps(w + 8);
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(X + (int64_t)r * ldx + i);
        acc0[r] = _mm256_fmadd_ps(a, b0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(a, b1, acc1[r]);
      }
    }
  } else {
    for (int i = 0; i < k; ++i) {
      const float *w = W + (int64_t)i * ldw;
      const __m256 b0 = _mm256_maskload_ps(w, m0), b1 = _mm256_maskload_ps(w + 8, m1);
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(X + (int64_t)r * ldx + i);
        acc0[r] = _mm256_fmadd_ps(a, b0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(a, b1, acc1[r]);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_maskstore_ps(C + (int64_t)r * ldc, m0, acc0[r]);
    _mm256_maskstore_ps(C + (int64_t)r * ldc + 8, m1, acc1[r]);
  }
}

__attribute__((target("avx2,fma"))) void gemm_nn_avx2(int m, int n, int k, const float *X, int ldx, const float *W,
                                                       int ldw, float *C, int ldc) {
  for (int o = 0; o < n; o += 16) {
    const int nc = std::min(16, n - o);
    int r = 0;
    for (; r + 6 <= m; r += 6) nn_block_256<6>(nc, k, X + (int64_t)r * ldx, ldx, W + o, ldw, C + (int64_t)r * ldc + o, ldc);
    const float *Xr = X + (int64_t)r * ldx;
    float *Cr = C + (int64_t)r * ldc + o;
    switch (m - r) {
      case 5: nn_block_256<5>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 4: nn_block_256<4>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 3: nn_block_256<3>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 2: nn_block_256<2>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      case 1: nn_block_256<1>(nc, k, Xr, ldx, W + o, ldw, Cr, ldc); break;
      default: break;
    }
  }
}
// Columns layout (see cols_block_512): 2 vectors of 8 columns x NO outputs.
template <int NO>
__attribute__((target("avx2,fma"))) RPU_AG_AI void cols_block_256(int k, const float *X, int ldx, const float *WT,
                                                                  int ldwt, float *C, int ldc, int cnt) {
  alignas(32) float S[8][2][NO][8];
  const __m256i m0 = tail_mask_256(std::min(8, cnt)), m1 = tail_mask_256(std::max(0, cnt - 8));
  for (int l = 0; l < 16; ++l) {
    __m256 acc[2][NO];
    for (int v = 0; v < 2; ++v)
      for (int o = 0; o < NO; ++o) acc[v][o] = _mm256_setzero_ps();
    for (int i = l; i < k; i += 16) {
      const float *xi = X + (int64_t)i * ldx;
      const __m256 x0 = cnt >= 16 ? _mm256_loadu_ps(xi) : _mm256_maskload_ps(xi, m0);
      const __m256 x1 = cnt >= 16 ? _mm256_loadu_ps(xi + 8) : _mm256_maskload_ps(xi + 8, m1);
      for (int o = 0; o < NO; ++o) {
        const __m256 w = _mm256_broadcast_ss(WT + (int64_t)i * ldwt + o);
        acc[0][o] = _mm256_fmadd_ps(x0, w, acc[0][o]);
        acc[1][o] = _mm256_fmadd_ps(x1, w, acc[1][o]);
      }
    }
    for (int v = 0; v < 2; ++v)
      for (int o = 0; o < NO; ++o) {
        if (l < 8) _mm256_store_ps(S[l][v][o], acc[v][o]);
        else _mm256_store_ps(S[l - 8][v][o], _mm256_add_ps(_mm256_load_ps(S[l - 8][v][o]), acc[v][o]));
      }
  }
  for (int v = 0; v < 2; ++v)
    for (int o = 0; o < NO; ++o) {
      __m256 t[4];
      for (int l = 0; l < 4; ++l) t[l] = _mm256_add_ps(_mm256_load_ps(S[l][v][o]), _mm256_load_ps(S[l + 4][v][o]));
      for (int l = 0; l < 2; ++l) t[l] = _mm256_add_ps(t[l], t[l + 2]);
      const __m256 y = _mm256_add_ps(t[0], t[1]);
      float *c = C + (int64_t)o * ldc + 8 * v;
      if (cnt >= 16) _mm256_storeu_ps(c, y);
      else _mm256_maskstore_ps(c, v == 0 ? m0 : m1, y);
    }
}

__attribute__((target("avx2,fma"))) void gemm_columns_avx2(int m, int n, int k, const float *X, int ldx,
                                                            const float *WT, int ldwt, float *C, int ldc) {
  for (int r = 0; r < m; r += 16) {
    const int cnt = std::min(16, m - r);
    int o = 0;
    for (; o + 4 <= n; o += 4) cols_block_256<4>(k, X + r, ldx, WT + o, ldwt, C + (int64_t)o * ldc + r, ldc, cnt);
    const float *Wo = WT + o;
    float *Co = C + (int64_t)o * ldc + r;
    switch (n - o) {
      case 3: cols_block_256<3>(k, X + r, ldx, Wo, ldwt, Co, ldc, cnt); break;
      case 2: cols_block_256<2>(k, X + r, ldx, Wo, ldwt, Co, ldc, cnt); break;
      case 1: cols_block_256<1>(k, X + r, ldx, Wo, ldwt, Co, ldc, cnt); break;
      default: break;
    }
  }
}
#pragma GCC diagnostic pop
#endif  // RPU_AG_X86

}  // namespace

void analog_gemm(bool transposed, int m, int n, int k, const float *X, int ldx, const float *W, int ldw, float *C,
                 int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int r = 0; r < m; ++r)
      for (int o = 0; o < n; ++o) C[(int64_t)r * ldc + o] = 0.0f;
    return;
  }
#ifdef RPU_AG_X86
  const int level = simd_level();
  if (level == 2) {
    if (transposed) gemm_nn_avx512(m, n, k, X, ldx, W, ldw, C, ldc);
    else gemm_nt_avx512(m, n, k, X, ldx, W, ldw, C, ldc);
    return;
  }
  if (level == 1) {
    if (transposed) gemm_nn_avx2(m, n, k, X, ldx, W, ldw, C, ldc);
    else gemm_nt_avx2(m, n, k, X, ldx, W, ldw, C, ldc);
    return;
  }
#endif
  if (transposed) gemm_nn_generic(m, n, k, X, ldx, W, ldw, C, ldc);
  else gemm_nt_generic(m, n, k, X, ldx, W, ldw, C, ldc);
}

void analog_gemm_columns(int m, int n, int k, const float *X, int ldx, const float *WT, int ldwt, float *C,
                         int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int o = 0; o < n; ++o)
      for (int r = 0; r < m; ++r) C[(int64_t)o * ldc + r] = 0.0f;
    return;
  }
#ifdef RPU_AG_X86
  const int level = simd_level();
  if (level == 2) return gemm_columns_avx512(m, n, k, X, ldx, WT, ldwt, C, ldc);
  if (level == 1) return gemm_columns_avx2(m, n, k, X, ldx, WT, ldwt, C, ldc);
#endif
  gemm_columns_generic(m, n, k, X, ldx, WT, ldwt, C, ldc);
}

}  // namespace rpu
