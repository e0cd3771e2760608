// The convolution pipeline (io_conv.h).  The element steps are those of io_pipeline.cpp, written
// for the columns layout (element i of 16 output positions side by side) with the same
// operations in the same order, so the values are io_mvm's bit for bit; no contraction into FMA
// (same options as io_pipeline.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "io_conv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "analog_gemm.h"
#include "io_math.h"
#include "rng.h"
#include "threading.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__) && \
    !defined(RPU_IO_GENERIC)
#define RPU_CONV_X86 1
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define RPU_CONV_AI inline __attribute__((always_inline))
#else
#define RPU_CONV_AI inline
#endif

namespace rpu {
namespace {

// ---- element kernels on a block of columns: element (i, j) at p[i * ld + j], j < nc ------------

// Noise management needs max |x| and max x of each unfolded row (scan_row_body).  Both are
// order-independent, so they come from per-pixel maps over the channels, unfolded like the
// input: amap = max_c |x| (NaN where a channel is NaN: a NaN sticks), and with mmap (not null)
// mmap = max_c x (NaNs skipped).  Returns whether any element is NaN or Inf.
template <bool kHw>
RPU_CONV_AI bool pixel_maps_body(const float *__restrict x, int64_t C, int64_t V, float *__restrict amap,
                                 float *__restrict mmap) {
  for (int64_t v = 0; v < V; ++v) amap[v] = 0.0f;
  int bad = 0;
  for (int64_t c = 0; c < C; ++c) {
    const float *xc = x + c * V;
#pragma omp simd reduction(| : bad)
    for (int64_t v = 0; v < V; ++v) {
      const float ae = fabsf(xc[v]);
      amap[v] = (ae > amap[v] || ae != ae) ? ae : amap[v];
      bad |= !(ae <= 3.40282347e38f);  // NaN or Inf
    }
  }
  if (mmap != nullptr) {
    for (int64_t v = 0; v < V; ++v) mmap[v] = -INFINITY;
    for (int64_t c = 0; c < C; ++c) {
      const float *xc = x + c * V;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) mmap[v] = xc[v] > mmap[v] ? xc[v] : mmap[v];
    }
  }
  return bad != 0;
}

// Column-wise maximum of L rows (a NaN sets nan[j] and is otherwise skipped), into acc.
template <bool kHw>
RPU_CONV_AI void max_cols_body(const float *__restrict x, int L, int nc, int ld, float *__restrict acc,
                               int *__restrict nan) {
  for (int i = 0; i < L; ++i) {
    const float *xi = x + (int64_t)i * ld;
#pragma omp simd
    for (int j = 0; j < nc; ++j) {
      const float v = xi[j];
      acc[j] = v > acc[j] ? v : acc[j];
      nan[j] |= (v != v);
    }
  }
}

// DAC (dac_row_body): q = quantize_clip(x * f[j]) (+ noise * z).
template <bool kHw>
struct DacColsBody {
  const float *__restrict x;
  int L, nc, ld;
  const float *__restrict f;
  float step, bound, noise;
  const float *__restrict z;
  float *__restrict q;
  template <bool kQ, bool kC>
  RPU_CONV_AI void run() {
    for (int i = 0; i < L; ++i) {
      const float *xi = x + (int64_t)i * ld;
      float *qi = q + (int64_t)i * ld;
      if (z != nullptr) {
        const float *zi = z + (int64_t)i * ld;
#pragma omp simd
        for (int j = 0; j < nc; ++j) {
          const float v = quantize_clip_t<kQ, kC, false, kHw>(xi[j] * f[j], step, bound, 0.0f);
          qi[j] = v + noise * zi[j];
        }
      } else {
#pragma omp simd
        for (int j = 0; j < nc; ++j) qi[j] = quantize_clip_t<kQ, kC, false, kHw>(xi[j] * f[j], step, bound, 0.0f);
      }
    }
  }
};
template <bool kHw>
RPU_CONV_AI void dac_cols_body(const float *x, int L, int nc, int ld, const float *f, float step, float bound,
                               float noise, const float *z, float *q) {
  DacColsBody<kHw> b{x, L, nc, ld, f, step, bound, noise, z, q};
  dispatch_qc(step, bound, b);
}

// Output noise, saturation count and ADC in one pass (noise_sat_adc_body), in place:
// y = g[j] * quantize_clip(y + noise * z); cnt[j] += |y + noise * z| >= sat_bound (check only).
template <bool kHw>
struct AdcColsBody {
  float *__restrict y;
  int L, nc, ld;
  float noise;
  const float *__restrict z;
  bool check;
  float sat_bound;
  const float *__restrict g;
  float step, bound;
  int *__restrict cnt;
  template <bool kQ, bool kC>
  RPU_CONV_AI void run() {
    for (int o = 0; o < L; ++o) {
      float *yo = y + (int64_t)o * ld;
      const float *zo = z == nullptr ? nullptr : z + (int64_t)o * ld;
      if (zo != nullptr && check) {
#pragma omp simd
        for (int j = 0; j < nc; ++j) {
          const float v = yo[j] + noise * zo[j];
          cnt[j] += fabsf(v) >= sat_bound;
          yo[j] = g[j] * quantize_clip_t<kQ, kC, false, kHw>(v, step, bound, 0.0f);
        }
      } else if (zo != nullptr) {
#pragma omp simd
        for (int j = 0; j < nc; ++j)
          yo[j] = g[j] * quantize_clip_t<kQ, kC, false, kHw>(yo[j] + noise * zo[j], step, bound, 0.0f);
      } else if (check) {
#pragma omp simd
        for (int j = 0; j < nc; ++j) {
          const float v = yo[j];
          cnt[j] += fabsf(v) >= sat_bound;
          yo[j] = g[j] * quantize_clip_t<kQ, kC, false, kHw>(v, step, bound, 0.0f);
        }
      } else {
#pragma omp simd
        for (int j = 0; j < nc; ++j) yo[j] = g[j] * quantize_clip_t<kQ, kC, false, kHw>(yo[j], step, bound, 0.0f);
      }
    }
  }
};
template <bool kHw>
RPU_CONV_AI void adc_cols_body(float *y, int L, int nc, int ld, float noise, const float *z, bool check,
                               float sat_bound, const float *g, float step, float bound, int *cnt) {
  AdcColsBody<kHw> b{y, L, nc, ld, noise, z, check, sat_bound, g, step, bound, cnt};
  dispatch_qc(step, bound, b);
}

#ifdef RPU_CONV_X86
#define RPU_CONV_KERNEL(ret, name, params, args)                                                      \
  ret name##_generic params { return name##_body<false> args; }                                      \
  __attribute__((target("avx2"))) ret name##_avx2 params { return name##_body<true> args; }          \
  __attribute__((target("avx512f"))) ret name##_avx512 params { return name##_body<true> args; }
#define CONV_CALL(name, args) \
  (g_simd == 2 ? name##_avx512 args : (g_simd == 1 ? name##_avx2 args : name##_generic args))
#else
#define RPU_CONV_KERNEL(ret, name, params, args) \
  ret name##_generic params { return name##_body<false> args; }
#define CONV_CALL(name, args) name##_generic args
#endif

RPU_CONV_KERNEL(bool, pixel_maps, (const float *x, int64_t C, int64_t V, float *amap, float *mmap),
                (x, C, V, amap, mmap))
RPU_CONV_KERNEL(void, max_cols, (const float *x, int L, int nc, int ld, float *acc, int *nan), (x, L, nc, ld, acc, nan))
RPU_CONV_KERNEL(void, dac_cols,
                (const float *x, int L, int nc, int ld, const float *f, float step, float bound, float noise,
                 const float *z, float *q),
                (x, L, nc, ld, f, step, bound, noise, z, q))
RPU_CONV_KERNEL(void, adc_cols,
                (float *y, int L, int nc, int ld, float noise, const float *z, bool check, float sat_bound,
                 const float *g, float step, float bound, int *cnt),
                (y, L, nc, ld, noise, z, check, sat_bound, g, step, bound, cnt))

#ifdef RPU_CONV_X86
__attribute__((target("avx512f"))) void store_run_avx512(const float *src, int len, const float *bias, float *dst) {
  const __m512 b = _mm512_set1_ps(bias != nullptr ? *bias : 0.0f);
  for (int t = 0; t < len; t += 16) {
    const __mmask16 m = len - t >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - t)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(m, src + t);
    if (bias != nullptr) v = _mm512_add_ps(v, b);
    _mm512_mask_storeu_ps(dst + t, m, v);
  }
}
#endif

// dst[t * stride] = src[t] (+ *bias) for t < len.
void store_run(const float *__restrict src, int len, const float *bias, float *__restrict dst, int64_t stride) {
#ifdef RPU_CONV_X86
  if (stride == 1 && simd_level() == 2) return store_run_avx512(src, len, bias, dst);
#endif
  const float b = bias != nullptr ? *bias : 0.0f;
  if (stride == 1) {
    if (bias != nullptr)
      for (int t = 0; t < len; ++t) dst[t] = src[t] + b;
    else
      for (int t = 0; t < len; ++t) dst[t] = src[t];
  } else {
    if (bias != nullptr)
      for (int t = 0; t < len; ++t) dst[t * stride] = src[t] + b;
    else
      for (int t = 0; t < len; ++t) dst[t * stride] = src[t];
  }
}

// A float buffer whose data() is 64-byte aligned (the block rows are whole cache lines), left
// uninitialized; resize() keeps the memory when it is large enough.
class Aligned64 {
 public:
  void resize(size_t n) {
    if (buf_ != nullptr && n <= cap_) return;
    buf_.reset(new float[n + 16]);
    cap_ = n;
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf_.get());
    data_ = buf_.get() + ((64 - (p & 63)) & 63) / sizeof(float);
  }
  float *data() { return data_; }
  float &operator[](size_t i) { return data_[i]; }

 private:
  std::unique_ptr<float[]> buf_;
  size_t cap_ = 0;
  float *data_ = nullptr;
};

constexpr int kBlockRows = 128;  // output positions per block (a multiple of 16; 128 ran 5% faster than 64)
constexpr int kSlab = 32;  // columns of a slab of the DAC's output (fill_dac)
constexpr int kFillRows = 16;   // unfolded rows built and converted at a time (stay in L1)

#ifdef RPU_CONV_X86
// The quantization of quantize_clip_t<true, kC, false, true> on 16 lanes without the division
// v / step where possible.  Only floor(q + 0.5) of the quotient q = RN(v / step) matters; qa,
// an approximation with |qa - q| < |qa| 2^-21 + 2^-148 (the callers' products of v or its
// factors with inv = RN(1 / step) have a relative error below 5 2^-24), gives the same integer
// n = the integer nearest to qa whenever no half-integer lies between qa and q, which holds if
//   |qa - n| + |qa| 2^-20 < 0.5                       (general check), or
//   |qa - n| < c = 0.5 - B 2^-19 for a bound B >= |qa|  (kBound: the caller knows B < 2^18).
// Either also bounds |qa| < 2^19, where q + 0.5 is exact and the clamp to +-1e9 does nothing.
// The other lanes (rare; NaN and Inf included) are computed by quantize_clip_t from the exact
// v = exact_v().
template <bool kC, bool kBound, typename ExactV>
__attribute__((target("avx512f"))) RPU_CONV_AI __m512 quantize_512(__m512 qa, float step, float bound, float c,
                                                                   const ExactV &exact_v) {
  const __m512 n = _mm512_roundscale_ps(qa, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 e = _mm512_abs_ps(_mm512_sub_ps(qa, n));  // exact
  __mmask16 ok;
  if (kBound) {
    ok = _mm512_cmp_ps_mask(e, _mm512_set1_ps(c), _CMP_LT_OQ);
  } else {
    const __m512 m = _mm512_fmadd_ps(_mm512_abs_ps(qa), _mm512_set1_ps(0x1p-20f), e);
    ok = _mm512_cmp_ps_mask(m, _mm512_set1_ps(0.5f), _CMP_LT_OQ);
  }
  // (n + 0: floor() never gives -0)
  __m512 r = _mm512_mul_ps(_mm512_add_ps(n, _mm512_setzero_ps()), _mm512_set1_ps(step));
  if (kC) r = _mm512_max_ps(_mm512_min_ps(r, _mm512_set1_ps(bound)), _mm512_set1_ps(-bound));  // r is finite
  if (ok != 0xFFFF) {
    alignas(64) float vs[16], rs[16];
    _mm512_store_ps(vs, exact_v());
    _mm512_store_ps(rs, r);
    for (int l = 0; l < 16; ++l)
      if (!((ok >> l) & 1)) rs[l] = quantize_clip_t<true, kC, false, true>(vs[l], step, bound, 0.0f);
    r = _mm512_load_ps(rs);
  }
  return r;
}

// The unfolding and the DAC (dac_cols with step > 0) of a whole block in one pass, without
// the intermediate unfolded rows; padding enters the DAC as 0.  finv[j] = RN(f[j] / step)
// (the check's qa = x * finv[j]); with kBound, c is the constant of the check for B.
template <bool kC, bool kBound>
__attribute__((target("avx512f"))) void fill_dac_q512(const ColumnsBlock &cb, const float *X, bool ones_column,
                                                      int64_t K, int64_t k_cols, int nr, const float *f,
                                                      const float *finv, float step, float bound, float c,
                                                      float noise, const float *z, float *q, int ld, int slab) {
  // Element (k, j) of the block at qcol(j)[k * qs]: rows of ld, or slabs of 32 columns (below).
  const int64_t qs = slab > 0 ? slab : ld;
  auto qcol = [&](int64_t j) { return slab > 0 ? q + (j / slab) * K * slab + j % slab : q + j; };
  const ConvShape &s = cb.s;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // DAC of 16 inputs x of rows j .. j+15 (mask m) into row k.
  auto dac = [&](int64_t k, int64_t j, __mmask16 m, __m512 x) {
    const __m512 qa = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(m, finv + j));
    __m512 r = quantize_512<kC, kBound>(qa, step, bound, c,
                                        [&] { return _mm512_mul_ps(x, _mm512_maskz_loadu_ps(m, f + j)); });
    if (z != nullptr) r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_set1_ps(noise), _mm512_maskz_loadu_ps(m, z + k * ld + j)));
    _mm512_mask_storeu_ps(qcol(j) + k * qs, m, r);
  };
  auto tail = [](int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); };
  for (int64_t k = k_cols; k < K; ++k)  // the ones column
    for (int64_t j = 0; j < nr; j += 16) dac(k, j, tail(nr - j), _mm512_set1_ps(ones_column ? 1.0f : 0.0f));
  const int64_t K2 = s.kernel[2], K01 = s.kernel[0] * s.kernel[1], V = s.in_volume(), st2 = s.stride[2];
  // No padding and unit stride: every segment is a contiguous slice of the input; the K2
  // segments of a kernel row are done together (one pass over the run).
  if (st2 == 1 && s.padding[0] == 0 && s.padding[1] == 0 && s.padding[2] == 0) {
    // offset of column k's input from that of column 0 (the same for every run: no padding),
    // then 16 rows at a time down all columns
    const int64_t d2 = s.dilation[2];
    std::vector<int64_t> offk(k_cols);
    for (int64_t ch = 0, k = 0; ch < s.channels; ++ch)
      for (int64_t k01 = 0; k01 < K01; ++k01)
        for (int64_t k2 = 0; k2 < K2; ++k2, ++k) offk[k] = ch * V + cb.line_off[k01] - cb.line_off[0] + k2 * d2;
    for (size_t u = 0; u < cb.runs.size(); ++u) {
      const ColumnsBlock::Run &run = cb.runs[u];
      const float *x0 = X + run.img + cb.line_off[u * K01] + run.o2;  // column 0 of the run's first row
      for (int64_t i = 0; i < run.len; i += 16) {
        const __mmask16 m = tail(run.len - i);
        const int64_t j = run.j + i;
        const __m512 fi = _mm512_maskz_loadu_ps(m, finv + j);
        const float *xi = x0 + i;
        float *qj = qcol(j);
        auto exact = [&](__m512 x) { return _mm512_mul_ps(x, _mm512_maskz_loadu_ps(m, f + j)); };
        if (m == 0xFFFF && z == nullptr && kBound) {
          // The check of quantize_512 once per group of kGroup rows (the largest |qa - n| of
          // the group; no NaN here, B is finite); a group that fails is done again by
          // quantize_512, which takes the exact path for the lanes that need it (about 3% of
          // groups with the default 7-bit DAC).
          constexpr int64_t kGroup = 8;
          const __m512 vstep = _mm512_set1_ps(step), vc = _mm512_set1_ps(c);
          for (int64_t k0 = 0; k0 < k_cols; k0 += kGroup) {
            const int64_t k1 = std::min(k_cols, k0 + kGroup);
            __m512 emax = _mm512_setzero_ps();
            for (int64_t k = k0; k < k1; ++k) {
              const __m512 qa = _mm512_mul_ps(_mm512_loadu_ps(xi + offk[k]), fi);
              const __m512 n = _mm512_roundscale_ps(qa, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
              emax = _mm512_max_ps(emax, _mm512_abs_ps(_mm512_sub_ps(qa, n)));
              __m512 r = _mm512_mul_ps(_mm512_add_ps(n, _mm512_setzero_ps()), vstep);  // (+0: as quantize_512)
              if (kC) r = _mm512_max_ps(_mm512_min_ps(r, _mm512_set1_ps(bound)), _mm512_set1_ps(-bound));
              _mm512_storeu_ps(qj + k * qs, r);
            }
            if (_mm512_cmp_ps_mask(emax, vc, _CMP_LT_OQ) != 0xFFFF)
              for (int64_t k = k0; k < k1; ++k) {
                const __m512 x = _mm512_loadu_ps(xi + offk[k]);
                _mm512_storeu_ps(qj + k * qs, quantize_512<kC, kBound>(_mm512_mul_ps(x, fi), step, bound, c,
                                                                       [&] { return exact(x); }));
              }
          }
        } else if (m == 0xFFFF && z == nullptr) {
          for (int64_t k = 0; k < k_cols; ++k) {
            const __m512 x = _mm512_loadu_ps(xi + offk[k]);
            _mm512_storeu_ps(qj + k * qs,
                             quantize_512<kC, kBound>(_mm512_mul_ps(x, fi), step, bound, c, [&] { return exact(x); }));
          }
        } else {
          for (int64_t k = 0; k < k_cols; ++k) {
            const __m512 x = _mm512_maskz_loadu_ps(m, xi + offk[k]);
            __m512 r = quantize_512<kC, kBound>(_mm512_mul_ps(x, fi), step, bound, c, [&] { return exact(x); });
            if (z != nullptr)
              r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_set1_ps(noise), _mm512_maskz_loadu_ps(m, z + k * ld + j)));
            _mm512_mask_storeu_ps(qj + k * qs, m, r);
          }
        }
      }
    }
    return;
  }
  for (size_t u = 0; u < cb.runs.size(); ++u) {
    const ColumnsBlock::Run &run = cb.runs[u];
    const int64_t *lo = cb.lo.data() + u * K2, *hi = cb.hi.data() + u * K2;
    for (int64_t ch = 0; ch < s.channels; ++ch)
      for (int64_t k01 = 0; k01 < K01; ++k01) {
        const int64_t off = cb.line_off[u * K01 + k01];
        const float *line = X + run.img + ch * V + off;
        for (int64_t k2 = 0; k2 < K2; ++k2) {
          const int64_t k = (ch * K01 + k01) * K2 + k2;
          const int64_t a = off < 0 ? run.len : lo[k2], b = off < 0 ? run.len : hi[k2];
          const float *src = line + (run.o2 * st2 + k2 * s.dilation[2] - s.padding[2]);  // row i at src[i * st2]
          for (int64_t i = 0; i < run.len; i += 16) {
            const __mmask16 m = tail(run.len - i);
            __m512 x;
            if (a <= i && i + 16 <= b && st2 == 1) {
              x = _mm512_loadu_ps(src + i);
            } else if (b <= i || i + 16 <= a) {
              x = _mm512_setzero_ps();
            } else {  // lanes i + l with a <= i + l < b read the input
              const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)i), lane);
              const __mmask16 in = _mm512_cmp_epi32_mask(idx, _mm512_set1_epi32((int)a), _MM_CMPINT_NLT) &
                                   _mm512_cmp_epi32_mask(idx, _mm512_set1_epi32((int)b), _MM_CMPINT_LT) & m;
              if (st2 == 1)
                x = _mm512_maskz_loadu_ps(in, src + i);
              else
                x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in,
                                             _mm512_mullo_epi32(idx, _mm512_set1_epi32((int)st2)), src, 4);
            }
            dac(k, run.j + i, m, x);
          }
        }
      }
  }
}

// adc_cols with step > 0.
template <bool kC>
__attribute__((target("avx512f"))) void adc_cols_q512(float *y, int L, int nc, int ld, float noise, const float *z,
                                                      bool check, float sat_bound, const float *g, float step,
                                                      float bound, int *cnt) {
  const float inv = 1.0f / step;
  for (int j = 0; j < nc; j += 16) {
    const __mmask16 m = nc - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nc - j)) - 1u);
    const __m512 gj = _mm512_maskz_loadu_ps(m, g + j);
    __m512i c = _mm512_maskz_loadu_epi32(m, cnt + j);
    for (int o = 0; o < L; ++o) {
      float *yo = y + (int64_t)o * ld + j;
      __m512 v = _mm512_maskz_loadu_ps(m, yo);
      if (z != nullptr)
        v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(noise), _mm512_maskz_loadu_ps(m, z + (int64_t)o * ld + j)));
      if (check) {
        const __mmask16 sat = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(sat_bound), _CMP_GE_OQ);
        c = _mm512_mask_add_epi32(c, sat, c, _mm512_set1_epi32(1));
      }
      const __m512 r = quantize_512<kC, false>(_mm512_mul_ps(v, _mm512_set1_ps(inv)), step, bound, 0.0f,
                                               [&] { return v; });
      _mm512_mask_storeu_ps(yo, m, _mm512_mul_ps(gj, r));
    }
    _mm512_mask_storeu_epi32(cnt + j, m, c);
  }
}
// max_cols of the unfolded one-channel map of block mb (no padding, unit stride along the
// innermost dimension) straight from the map: acc[j] = max(acc[j], every element of row j)
// (a NaN skipped; nan[j] set if nan is not null).  The same values: vmaxps(v, acc) is
// v > acc ? v : acc.
__attribute__((target("avx512f"))) void window_max_512(const ColumnsBlock &mb, const float *map, float *acc,
                                                       int *nan) {
  const ConvShape &s = mb.s;
  const int64_t K01 = s.kernel[0] * s.kernel[1], K2 = s.kernel[2], d2 = s.dilation[2];
  for (size_t u = 0; u < mb.runs.size(); ++u) {
    const ColumnsBlock::Run &run = mb.runs[u];
    const float *base = map + run.img + run.o2;
    for (int64_t i = 0; i < run.len; i += 16) {
      const __mmask16 m = run.len - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (run.len - i)) - 1u);
      const int64_t j = run.j + i;
      __m512 a = _mm512_maskz_loadu_ps(m, acc + j);
      __mmask16 bad = 0;
      for (int64_t k01 = 0; k01 < K01; ++k01) {
        const float *line = base + mb.line_off[u * K01 + k01] + i;
        for (int64_t k2 = 0; k2 < K2; ++k2) {
          const __m512 v = _mm512_maskz_loadu_ps(m, line + k2 * d2);
          bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
          a = _mm512_max_ps(v, a);
        }
      }
      _mm512_mask_storeu_ps(acc + j, m, a);
      if (nan != nullptr && bad != 0)
        for (int l = 0; l < 16; ++l)
          if ((bad >> l) & 1) nan[j + l] = 1;
    }
  }
}
#endif


#ifdef RPU_CONV_X86
// finv[j] = f[j] * inv (j < nr); returns B >= every |x * finv[j]| of the block: the largest
// amax[j] * finv[j] * (1 + 2^-20), NaN if any is NaN.
__attribute__((target("avx512f"))) float dac_factors_512(const float *f, const float *amax, int nr, float inv,
                                                         float *finv) {
  __m512 b = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int j = 0; j < nr; j += 16) {
    const __mmask16 m = nr - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nr - j)) - 1u);
    const __m512 fi = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, f + j), _mm512_set1_ps(inv));
    _mm512_mask_storeu_ps(finv + j, m, fi);
    const __m512 t =
        _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, amax + j), fi), _mm512_set1_ps(1.0f + 0x1p-20f));
    bad |= _mm512_mask_cmp_ps_mask(m, t, t, _CMP_UNORD_Q);
    b = _mm512_mask_max_ps(b, m, t, b);
  }
  return bad != 0 ? NAN : _mm512_reduce_max_ps(b);
}
#endif

// The DAC of a block (the template kernels; the AVX-512 path is fill_dac_q512).
void dac_cols(int g_simd, const float *x, int L, int nc, int ld, const float *f, float step, float bound,
              float noise, const float *z, float *q) {
  CONV_CALL(dac_cols, (x, L, nc, ld, f, step, bound, noise, z, q));
}

// Rows 0 .. K-1 of a block (cb) unfolded and through the DAC into q.  amax: the largest |x| of
// each position (used for the bound of the fast quantization check).
// With slab > 0 (and z null), the AVX-512 path may write the block as slabs of `slab` columns,
// element (k, j) at q[(j / slab) * K * slab + k * slab + j % slab] (each slab's rows contiguous:
// the DAC's stores and the product's loads stay in L1); returns whether it did.
bool fill_dac(const ColumnsBlock &cb, const float *X, bool ones_column, int K, int nr, int ld, const float *f,
              const float *amax, float step, float bound, float noise, const float *z, float *q, int slab) {
  const int g_simd = simd_level();
  const int64_t k_cols = K - (ones_column ? 1 : 0);
#ifdef RPU_CONV_X86
  if (g_simd == 2 && step > 0.0f) {
    // (slabs need every 16-column vector inside one slab: runs starting at multiples of 16)
    for (const ColumnsBlock::Run &u : cb.runs)
      if (u.j % 16 != 0) slab = 0;
    alignas(64) float finv[kBlockRows];
    const float B = dac_factors_512(f, amax, nr, 1.0f / step, finv);
    auto run = [&](auto kc, auto kb, float c) {
      fill_dac_q512<decltype(kc)::value, decltype(kb)::value>(cb, X, ones_column, K, k_cols, nr, f, finv, step, bound,
                                                              c, noise, z, q, ld, z == nullptr ? slab : 0);
    };
    using T = std::true_type;
    using F = std::false_type;
    if (B < 0x1p18f) {
      const float c = 0.5f - B * 0x1p-19f;
      // Every |n| <= floor(B + 0.5) (the fast lanes, and the exact lanes: |q| <= B as well), so
      // when that many steps stay inside the bound the clip does nothing (as with noise
      // management ABS_MAX: |x / s| <= 1 = inp_bound, 63 steps of 2/126 = 1.0f) and is left out.
      if (bound > 0.0f && !(floorf(B + 0.5f) * step <= bound)) run(T{}, T{}, c);
      else run(F{}, T{}, c);
    } else {
      if (bound > 0.0f) run(T{}, F{}, 0.0f);
      else run(F{}, F{}, 0.0f);
    }
    return z == nullptr && slab > 0;
  }
#endif
  for (int k = 0; k < K; k += kFillRows) {
    const int kn = std::min(kFillRows, K - k);
    float *qk = q + (int64_t)k * ld;
    cb.fill(X, ones_column, k, k + kn, qk, ld);
    dac_cols(g_simd, qk, kn, nr, ld, f, step, bound, noise, z == nullptr ? nullptr : z + (int64_t)k * ld, qk);
  }
  return false;
}

void adc_cols(int g_simd, float *y, int L, int nc, int ld, float noise, const float *z, bool check, float sat_bound,
              const float *g, float step, float bound, int *cnt) {
#ifdef RPU_CONV_X86
  if (g_simd == 2 && step > 0.0f) {
    if (bound > 0.0f) adc_cols_q512<true>(y, L, nc, ld, noise, z, check, sat_bound, g, step, bound, cnt);
    else adc_cols_q512<false>(y, L, nc, ld, noise, z, check, sat_bound, g, step, bound, cnt);
    return;
  }
#endif
  CONV_CALL(adc_cols, (y, L, nc, ld, noise, z, check, sat_bound, g, step, bound, cnt));
}



// Noise management of nr positions (noise_scale() of amax[j], or NaN where nan[j], and mx[j]):
// sn[j], the DAC factor f[j] = 1 / sn[j] (0 for a zero position: its output is 0, and its DAC
// input 0 instead of 0 * inf) and the output factor g[j] = sn[j].  Returns whether a position
// is zero.  (The type fixed per loop: branch-free, it vectorizes.)
bool noise_scales(const IOParameters &io, const float *amax, const float *mx, const int *nan, int nr, float *sn,
                  float *f, float *g) {
  int any_zero = 0;
  const float thr = io.nm_thres;
  auto run = [&](auto nm) {
#pragma omp simd reduction(| : any_zero)
    for (int j = 0; j < nr; ++j) {
      const float s_ = noise_scale_t<decltype(nm)::value>(nan[j] ? NAN : amax[j], mx[j], thr);
      sn[j] = s_;
      any_zero |= s_ == 0.0f;
      f[j] = s_ == 0.0f ? 0.0f : 1.0f / (s_ * 1.0f);
      g[j] = s_ * 1.0f;
    }
  };
  using NM = NoiseManagementType;
  switch (io.noise_management) {
    case NM::None: run(std::integral_constant<NM, NM::None>{}); break;
    case NM::Max: run(std::integral_constant<NM, NM::Max>{}); break;
    case NM::Constant: run(std::integral_constant<NM, NM::Constant>{}); break;
    default: run(std::integral_constant<NM, NM::AbsMax>{});
  }
  return any_zero != 0;
}

// A stretch of a block's positions inside one image: positions l .. l+len-1 of image n are
// columns j .. j+len-1 of the block.
struct Run {
  int64_t n, l;
  int len, j;
};

// The buffers of one io_conv worker (see io_conv).
struct Scratch {
  Aligned64 qt, yt, zt, mt;  // (rows of kBlockRows floats: whole cache lines)
  Aligned64 xp, am, mm;      // one image made ready (image by image)
  std::vector<float> xrow, qrow, yrow, zrow;
  std::vector<Run> runs;
  ColumnsBlock cb, mb;
};
// This thread's (kept between calls: a few hundred kB allocated and freed per call made glibc
// trim its heap and the next call fault the pages in again, 100 page faults per call here).
Scratch &thread_scratch() {
  static thread_local Scratch w;
  return w;
}

void block_runs(int64_t r0, int nr, int64_t L, std::vector<Run> &runs) {
  runs.clear();
  for (int j = 0; j < nr;) {
    const int64_t r = r0 + j;
    Run u{r / L, r % L, 0, j};
    u.len = (int)std::min<int64_t>(L - u.l, nr - j);
    runs.push_back(u);
    j += u.len;
  }
}

// The fallback: the unfolded input in memory, io_mvm, then the layout change.
void io_conv_unfolded(const float *W, int M, int K, const float *X, const ConvShape &s, bool ones_column, float *Y,
                      const ConvOutputLayout &yl, const IOParameters &io, const MappingParameter &map,
                      bool bound_management, const float *alpha, int n_alpha, const float *bias,
                      const MVMCall &rng) {
  const int64_t rows = s.rows(), L = s.out_volume();
  std::vector<float> cols((size_t)rows * K), yr((size_t)rows * M);
  im2col(X, s, ones_column, cols.data(), K);
  io_mvm(W, M, K, false, cols.data(), (int)rows, yr.data(), io, map, bound_management, alpha, n_alpha, rng);
  parallel_for_dynamic(s.batch * M, 4, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const int64_t n = q / M, o = q % M;
      float *y = Y + n * yl.image + o * yl.channel;
      const float *src = yr.data() + n * L * M + o;
      if (bias != nullptr)
        for (int64_t l = 0; l < L; ++l) y[l * yl.position] = src[l * M] + bias[o];
      else
        for (int64_t l = 0; l < L; ++l) y[l * yl.position] = src[l * M];
    }
  });
}

}  // namespace

void io_conv(const float *W, int M, int K, const float *X, const ConvShape &s, bool ones_column, float *Y,
             const ConvOutputLayout &yl, const IOParameters &io, const MappingParameter &map,
             bool bound_management, const float *alpha, int n_alpha, const float *bias, const MVMCall &rng,
             bool *nonfinite) {
  const int64_t rows = s.rows(), L = s.out_volume();
  if (nonfinite != nullptr) *nonfinite = false;
  if (rows <= 0 || M <= 0) return;
  const int g_simd = simd_level();
  const float inp_step = quant_step(io.inp_res, io.inp_bound);
  const float out_step = quant_step(io.out_res, io.out_bound);
  const int tile_rows = std::max(1, map.max_output_size), tile_cols = std::max(1, map.max_input_size);
  const bool columns_path =
      io.is_perfect || (K <= tile_cols && !(io.inp_sto_round && inp_step > 0.0f) &&
                        !(io.out_sto_round && out_step > 0.0f) &&
                        io.noise_management != NoiseManagementType::AverageAbsMax);
  // Every input element of this group: NaN or Inf?
  auto scan_nonfinite = [&](int64_t n) {
    int bad = 0;
    for (int64_t c = 0; c < s.channels; ++c) {
      const float *p = X + n * s.image_stride + c * s.in_volume();
      const int64_t V0 = s.in_volume();
#pragma omp simd reduction(| : bad)
      for (int64_t v = 0; v < V0; ++v) bad |= !(fabsf(p[v]) <= 3.40282347e38f);
    }
    return bad != 0;
  };
  std::atomic<bool> any_nonfinite{false};
  if (!columns_path) {
    if (nonfinite != nullptr) {
      parallel_for_dynamic(s.batch, 1, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n)
          if (scan_nonfinite(n)) any_nonfinite.store(true, std::memory_order_relaxed);
      });
      *nonfinite = any_nonfinite.load();
    }
    io_conv_unfolded(W, M, K, X, s, ones_column, Y, yl, io, map, bound_management, alpha, n_alpha, bias, rng);
    return;
  }

  // Output scale and drift compensation of output o (apply_alpha_scale of io_mvm).
  const bool scaled = io.out_scale != 1.0f || alpha != nullptr;
  auto out_factor = [&](int o) {
    const float a = alpha == nullptr ? 1.0f : (n_alpha == 1 ? alpha[0] : alpha[o]);
    return io.out_scale * a;
  };

  static thread_local std::vector<float> tl_w_noisy;
  const float *Wu = io.is_perfect ? W : read_weights(W, M, K, io, rng, tl_w_noisy);
  // Tiles along the output only (K fits one tile): tile b = outputs b * tile_rows ...
  const int n_blocks = io.is_perfect ? 1 : (M + tile_rows - 1) / tile_rows;
  const int out_chunk = io.is_perfect ? M : tile_rows;
  const bool use_bm = bound_management && io.bound_management != BoundManagementType::None && io.out_bound > 0.0f;
  const float inp_bound = io.inp_bound, out_bound = io.out_bound;
  const float inp_noise = io.inp_noise, out_noise = io.out_noise;
  // Largest |weight| of each tile, for worst-case bound management (computed when first needed).
  std::vector<float> wmax(n_blocks, 0.0f);
  std::vector<std::once_flag> wmax_once(n_blocks);
  auto tile_wmax = [&](int b) {
    std::call_once(wmax_once[b], [&] {
      float m = 0.0f;
      const int o0 = b * out_chunk, o1 = std::min(M, o0 + out_chunk);
      for (int o = o0; o < o1; ++o)
        for (int i = 0; i < K; ++i) m = fmaxf(m, fabsf(Wu[(int64_t)o * K + i]));
      wmax[b] = m;
    });
    return wmax[b];
  };

  // Bound management of one output position whose output on tile b saturated at iteration 0
  // (scale sn): the iterations of io_mvm's rows, one position at a time (rare).
  auto redo_position = [&](int64_t r, int b, float sn, float *x, float *q, float *y, float *z) {
    const int o0 = b * out_chunk, Lo = std::min(M, o0 + out_chunk) - o0;
    const float *A = Wu + (int64_t)o0 * K;
    im2col_row(X, s, ones_column, r, x);
    const std::function<float()> wm = [&] { return tile_wmax(b); };
    float rf = bound_management_factor(io, 0, sn, 1.0f, x, K, wm);
    if (rf == 0.0f) return;  // accepted as computed
    const uint64_t base = noise_base(r, n_blocks, b);
    for (int it = 1;; ++it) {
      const float f = 1.0f / (sn * rf);
      if (inp_noise > 0.0f) fill_normal_bulk(z, K, rng.seed, TAG_INP_NOISE, (uint32_t)it, rng.call, base);
      for (int i = 0; i < K; ++i) {
        q[i] = quantize_clip(x[i] * f, inp_step, inp_bound, false, 0.0f);
        if (inp_noise > 0.0f) q[i] += inp_noise * z[i];
      }
      for (int o = 0; o < Lo; ++o) y[o] = analog_dot16_ref(q, A + (int64_t)o * K, K);
      if (out_noise > 0.0f) fill_normal_bulk(z, Lo, rng.seed, TAG_OUT_NOISE, (uint32_t)it, rng.call, base);
      int cnt = 0;
      const float g = sn * rf;
      for (int o = 0; o < Lo; ++o) {
        const float v = out_noise > 0.0f ? y[o] + out_noise * z[o] : y[o];
        cnt += fabsf(v) >= out_bound;
        y[o] = g * quantize_clip(v, out_step, out_bound, false, 0.0f);
      }
      if (cnt > 0) {
        const float next = bound_management_factor(io, it, sn, rf, x, K, wm);
        if (next > 0.0f) {
          rf = next;
          continue;
        }
      }
      break;
    }
    float *yn = Y + (r / L) * yl.image + (r % L) * yl.position;
    for (int o = 0; o < Lo; ++o) {
      float v = scaled ? y[o] * out_factor(o0 + o) : y[o];
      if (bias != nullptr) v = v + bias[o0 + o];
      yn[(int64_t)(o0 + o) * yl.channel] = v;
    }
  };

  // The blocks are unfolded from a zero-padded copy of the input (geometry sp, no padding): the
  // same elements, and no padding cases in the unfolding loops.  Noise management reads maps of
  // each image (see pixel_maps_body), unfolded per block as a one-channel input of the same
  // geometry (ms); max x only for noise management MAX.
  const bool padded = s.padding[0] > 0 || s.padding[1] > 0 || s.padding[2] > 0;
  ConvShape sp = s;
  if (padded) {
    for (int d = 0; d < 3; ++d) {
      sp.in[d] = s.in[d] + 2 * s.padding[d];
      sp.padding[d] = 0;
    }
    sp.image_stride = s.channels * sp.in_volume();
  }
  ConvShape ms = sp;
  ms.channels = 1;
  ms.image_stride = sp.in_volume();
  const int64_t V = sp.in_volume(), kv = s.kernel_volume();
  const bool need_mx = io.noise_management == NoiseManagementType::Max;
  // Image n made ready (one pass while it is in cache): the padded copy into xp (if padded), the
  // maps into am, mm (if not perfect; mm only for MAX) and the check for NaN and Inf, with the
  // maps or on its own.  Returns where the blocks unfold image n from.
  auto prepare_image = [&](int64_t n, float *xp, float *am, float *mm) {
    const float *img = X + n * s.image_stride;
    if (padded) {
      const int64_t P0 = s.padding[0], P1 = s.padding[1], P2 = s.padding[2], S1 = sp.in[1], S2 = sp.in[2];
      for (int64_t c = 0; c < s.channels; ++c) {
        const float *src = img + c * s.in_volume();
        float *dst = xp + c * V;
        for (int64_t i0 = 0; i0 < sp.in[0]; ++i0) {  // only the padding is zeroed
          float *plane = dst + i0 * S1 * S2;
          if (i0 < P0 || i0 >= P0 + s.in[0]) {
            std::memset(plane, 0, sizeof(float) * S1 * S2);
            continue;
          }
          std::memset(plane, 0, sizeof(float) * (P1 * S2 + P2));
          for (int64_t i1 = 0; i1 < s.in[1]; ++i1) {
            float *row = plane + (i1 + P1) * S2 + P2;
            std::memcpy(row, src + ((i0 - P0) * s.in[1] + i1) * s.in[2], sizeof(float) * s.in[2]);
            // this row's right padding and the next row's left padding (or the plane's last rows)
            const int64_t gap = i1 + 1 < s.in[1] ? 2 * P2 : P2 + P1 * S2;
            std::memset(row + s.in[2], 0, sizeof(float) * gap);
          }
        }
      }
    }
    const float *xi = padded ? xp : img;
    bool bad = false;
    if (!io.is_perfect)
      bad = CONV_CALL(pixel_maps, (xi, s.channels, V, am, need_mx ? mm : nullptr));
    else if (nonfinite != nullptr)
      bad = scan_nonfinite(n);
    if (bad) any_nonfinite.store(true, std::memory_order_relaxed);
    return xi;
  };
  const bool prep_needed = padded || !io.is_perfect || nonfinite != nullptr;

  // The weights (after read noise) transposed, WT[i * M + o]: analog_gemm_columns reads the
  // weights of one input for several outputs at once.
  // (kept between calls, like io_mvm's buffers: a few MB allocated and freed per call would
  // move glibc's dynamic mmap threshold and grow the heap)
  // (references: the workers must reach the calling thread's buffers, not their own)
  static thread_local std::vector<float> tl_x_padded, tl_amap, tl_mmap, tl_wt;
  std::vector<float> &x_padded = tl_x_padded, &amap = tl_amap, &mmap = tl_mmap, &WT = tl_wt;
  WT.resize((size_t)K * M);
  {
    const float *Wsrc = io.is_perfect ? W : Wu;
    for (int o = 0; o < M; ++o)
      for (int i = 0; i < K; ++i) WT[(size_t)i * M + o] = Wsrc[(int64_t)o * K + i];
  }
  const int max_lo = std::min(M, out_chunk);
  // [N * L, M]-like layouts: row r (= n * L + l) at Y + r * position, outputs contiguous
  const bool rows_layout = yl.channel == 1 && yl.image == L * yl.position;

  // One worker's buffers (thread_scratch()); the hot loops reach them through local pointers.
  auto make_scratch = [&](Scratch &w) {
    w.qt.resize((size_t)K * ((kBlockRows + kSlab - 1) / kSlab * kSlab));  // (whole slabs)
    w.yt.resize((size_t)max_lo * kBlockRows);
    if (!io.is_perfect) {
      w.zt.resize((size_t)std::max(K, max_lo) * kBlockRows);
      w.mt.resize((size_t)kv * kBlockRows);
    }
  };
  // Block of positions r0 .. r0+nr-1 (rows of io_mvm).  The unfolding reads xs, am, mm (input
  // and maps, geometry sp / ms) at row rl (= r0 when they hold every image, r0 - n L when they
  // hold image n alone); every value depends on the block's positions only.
  auto run_block = [&](Scratch &w, int64_t r0, int64_t rl, int nr, const float *xs, const float *am,
                       const float *mm) {
    constexpr int R = kBlockRows;
    alignas(64) float amax[R], mx[R], sn[R], f[R], g[R];
    alignas(64) int nan[R], cnt[R];
    alignas(64) uint64_t base[R];
    Aligned64 &qt = w.qt, &yt = w.yt, &zt = w.zt, &mt = w.mt;
    w.cb.prepare(sp, rl, nr);
    block_runs(r0, nr, L, w.runs);
    auto store = [&](int o0, int Lo) {
      if (rows_layout) {  // scale and bias in place, then the block transposed into its rows
        for (int o = 0; o < Lo; ++o) {
          float *yo = yt.data() + (int64_t)o * R;
          if (scaled) {
            const float fo = out_factor(o0 + o);
            for (int j = 0; j < nr; ++j) yo[j] *= fo;
          }
          if (bias != nullptr) {
            const float bo = bias[o0 + o];
            for (int j = 0; j < nr; ++j) yo[j] = yo[j] + bo;
          }
        }
        transpose_block(yt.data(), R, nr, Lo, Y + r0 * yl.position + o0, yl.position);
        return;
      }
      for (int o = 0; o < Lo; ++o) {
        float *yo = yt.data() + (int64_t)o * R;
        if (scaled) {
          const float fo = out_factor(o0 + o);
          for (int j = 0; j < nr; ++j) yo[j] *= fo;
        }
        for (const Run &u : w.runs)
          store_run(yo + u.j, u.len, bias == nullptr ? nullptr : bias + o0 + o,
                    Y + u.n * yl.image + (int64_t)(o0 + o) * yl.channel + u.l * yl.position, yl.position);
      }
    };
    if (io.is_perfect) {
      w.cb.fill(xs, ones_column, 0, K, qt.data(), R);
      analog_gemm_columns(nr, M, K, qt.data(), R, WT.data(), M, yt.data(), R);
      store(0, M);
      return;
    }
    // Noise management: one scale per position, the same on every tile (one tile along the input).
    w.mb.prepare(ms, rl, nr);
    for (int j = 0; j < nr; ++j) {
      amax[j] = ones_column ? 1.0f : 0.0f;
      mx[j] = ones_column ? 1.0f : -INFINITY;
      nan[j] = 0;
      cnt[j] = 0;
    }
#ifdef RPU_CONV_X86
    if (g_simd == 2 && ms.stride[2] == 1) {
      window_max_512(w.mb, am, amax, nan);
      if (need_mx) window_max_512(w.mb, mm, mx, nullptr);  // (mm has no NaN)
    } else
#endif
    {
      w.mb.fill(am, false, 0, kv, mt.data(), R);
      CONV_CALL(max_cols, (mt.data(), (int)kv, nr, R, amax, nan));
      if (need_mx) {
        w.mb.fill(mm, false, 0, kv, mt.data(), R);
        CONV_CALL(max_cols, (mt.data(), (int)kv, nr, R, mx, cnt));  // (cnt: scratch, mm has no NaN)
      }
    }
    const bool any_zero = noise_scales(io, amax, mx, nan, nr, sn, f, g);
    bool slabs = false;  // the DAC's output in slabs of kSlab columns (fill_dac)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int o0 = blk * out_chunk, Lo = std::min(M, o0 + out_chunk) - o0;
      const uint64_t base0 = noise_base(r0, n_blocks, blk), base_step = noise_base(1, n_blocks, 0);
      for (int j = 0; j < nr; ++j) base[j] = base0 + (uint64_t)j * base_step;
      if (blk == 0 || inp_noise > 0.0f) {  // the DAC (input noise differs per tile)
        if (inp_noise > 0.0f) fill_normal_columns(zt.data(), R, K, nr, base, rng.seed, TAG_INP_NOISE, 0, rng.call);
        slabs = fill_dac(w.cb, xs, ones_column, K, nr, R, f, amax, inp_step, inp_bound, inp_noise,
                         inp_noise > 0.0f ? zt.data() : nullptr, qt.data(), kSlab);
      }
      if (slabs)
        for (int j0 = 0; j0 < nr; j0 += kSlab)
          analog_gemm_columns(std::min(kSlab, nr - j0), Lo, K, qt.data() + (int64_t)j0 * K, kSlab, WT.data() + o0, M,
                              yt.data() + j0, R);
      else
        analog_gemm_columns(nr, Lo, K, qt.data(), R, WT.data() + o0, M, yt.data(), R);
      const float *zout = nullptr;
      if (out_noise > 0.0f) {
        fill_normal_columns(zt.data(), R, Lo, nr, base, rng.seed, TAG_OUT_NOISE, 0, rng.call);
        zout = zt.data();
      }
      for (int j = 0; j < nr; ++j) cnt[j] = 0;
      adc_cols(g_simd, yt.data(), Lo, nr, R, out_noise, zout, use_bm, out_bound, g, out_step, out_bound, cnt);
      if (any_zero)
        for (int o = 0; o < Lo; ++o)
          for (int j = 0; j < nr; ++j)
            if (sn[j] == 0.0f) yt[(size_t)o * R + j] = 0.0f;
      store(o0, Lo);
      if (use_bm)
        for (int j = 0; j < nr; ++j)
          if (cnt[j] > 0 && sn[j] != 0.0f) {
            w.xrow.resize(K);
            w.qrow.resize(K);
            w.yrow.resize(max_lo);
            w.zrow.resize(std::max(K, max_lo));
            redo_position(r0 + j, blk, sn[j], w.xrow.data(), w.qrow.data(), w.yrow.data(), w.zrow.data());
          }
    }
  };

  if (s.batch >= 4 * get_num_threads()) {
    // Enough images to share: each worker makes an image ready in its own buffers (a padded
    // image stays in cache) and computes the image's blocks right away.
    const int64_t per_image = (L + kBlockRows - 1) / kBlockRows;
    parallel_for_dynamic(s.batch, 1, [&](int64_t b, int64_t e) {
      Scratch &w = thread_scratch();
      make_scratch(w);
      Aligned64 &xp = w.xp, &am = w.am, &mm = w.mm;
      xp.resize(padded ? (size_t)sp.image_stride : 0);
      am.resize(io.is_perfect ? 0 : (size_t)V);
      mm.resize(io.is_perfect ? 0 : (size_t)V);
      for (int64_t n = b; n < e; ++n) {
        const float *xs = prep_needed ? prepare_image(n, xp.data(), am.data(), mm.data()) : X + n * s.image_stride;
        for (int64_t i = 0; i < per_image; ++i) {
          const int64_t l0 = i * kBlockRows;
          run_block(w, n * L + l0, l0, (int)std::min<int64_t>(kBlockRows, L - l0), xs, am.data(), mm.data());
        }
      }
    });
  } else {
    // Few images: all made ready first (shared buffers), then the blocks shared among the threads.
    if (padded) x_padded.resize((size_t)(s.batch * sp.image_stride));
    if (!io.is_perfect) {
      amap.resize((size_t)(s.batch * V));
      mmap.resize((size_t)(s.batch * V));
    }
    if (prep_needed)
      parallel_for_dynamic(s.batch, 1, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n)
          prepare_image(n, padded ? x_padded.data() + n * sp.image_stride : nullptr,
                        io.is_perfect ? nullptr : amap.data() + n * V, io.is_perfect ? nullptr : mmap.data() + n * V);
      });
    const float *Xu = padded ? x_padded.data() : X;
    parallel_for_dynamic((rows + kBlockRows - 1) / kBlockRows, 1, [&](int64_t b, int64_t e) {
      Scratch &w = thread_scratch();
      make_scratch(w);
      for (int64_t item = b; item < e; ++item) {
        const int64_t r0 = item * kBlockRows;
        run_block(w, r0, r0, (int)std::min<int64_t>(kBlockRows, rows - r0), Xu, amap.data(), mmap.data());
      }
    });
  }
  if (nonfinite != nullptr) *nonfinite = any_nonfinite.load();
}

}  // namespace rpu
