#include "im2col.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "rng.h"
#include "threading.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__) && \
    !defined(RPU_IO_GENERIC)
#include <immintrin.h>
#define RPU_IM2COL_X86 1
#endif

namespace rpu {
namespace {

#ifdef RPU_IM2COL_X86
// ColumnsBlock::fill with 16 rows per instruction: masked loads for the segments that touch the
// padding, gathers for a stride > 1 (pure data movement: the same values as the portable loop).
__attribute__((target("avx512f"))) void fill_avx512(const ColumnsBlock &cb, const float *X, bool ones_column,
                                                    int64_t k_begin, int64_t k_end, float *T, int64_t ldt) {
  const ConvShape &s = cb.s;
  const int64_t k_cols = s.cols(), K2 = s.kernel[2], K01 = s.kernel[0] * s.kernel[1], V = s.in_volume();
  const int64_t st2 = s.stride[2], d2 = s.dilation[2];
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto tail = [](int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); };
  for (int64_t k = std::max(k_begin, k_cols); k < k_end; ++k) {  // the ones column
    float *t = T + (k - k_begin) * ldt;
    for (int j = 0; j < cb.n_rows; ++j) t[j] = ones_column ? 1.0f : 0.0f;
  }
  const int64_t k_stop = std::min(k_end, k_cols);
  for (size_t u = 0; u < cb.runs.size(); ++u) {
    const ColumnsBlock::Run &run = cb.runs[u];
    for (int64_t c = k_begin / (K01 * K2); c * K01 * K2 < k_stop; ++c)
      for (int64_t k01 = 0; k01 < K01; ++k01) {
        const int64_t off = cb.line_off[u * K01 + k01];
        const float *line = X + run.img + c * V + off;
        for (int64_t k2 = 0; k2 < K2; ++k2) {
          const int64_t k = (c * K01 + k01) * K2 + k2;
          if (k < k_begin || k >= k_stop) continue;
          float *dst = T + (k - k_begin) * ldt + run.j;
          const int64_t a = off < 0 ? run.len : cb.lo[u * K2 + k2], b = off < 0 ? run.len : cb.hi[u * K2 + k2];
          const float *src = line + (run.o2 * st2 + k2 * d2 - s.padding[2]);  // row i at src[i * st2]
          for (int64_t i = 0; i < run.len; i += 16) {
            const __mmask16 m = tail(run.len - i);
            __m512 x;
            if (a <= i && i + 16 <= b && st2 == 1) {
              x = _mm512_loadu_ps(src + i);
            } else if (b <= i || i + 16 <= a) {
              x = _mm512_setzero_ps();
            } else {
              const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)i), lane);
              const __mmask16 in = _mm512_cmp_epi32_mask(idx, _mm512_set1_epi32((int)a), _MM_CMPINT_NLT) &
                                   _mm512_cmp_epi32_mask(idx, _mm512_set1_epi32((int)b), _MM_CMPINT_LT) & m;
              x = st2 == 1 ? _mm512_maskz_loadu_ps(in, src + i)
                           : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in,
                                                      _mm512_mullo_epi32(idx, _mm512_set1_epi32((int)st2)), src, 4);
            }
            _mm512_mask_storeu_ps(dst + i, m, x);
          }
        }
      }
  }
}

// transpose_block: 16 x 16 tiles transposed in registers.
__attribute__((target("avx512f"))) void transpose_avx512(const float *T, int64_t ldt, int nr, int64_t K, float *dst,
                                                         int64_t ld) {
  int64_t k0 = 0;
  for (; k0 + 16 <= K; k0 += 16) {
    int j0 = 0;
    for (; j0 + 16 <= nr; j0 += 16) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(T + (k0 + i) * ldt + j0);
      // 32-bit interleave, 64-bit interleave, then 128-bit lane shuffles
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
      }
      // r[4q + p]: column p (of 4) of rows 4q .. 4q+3, in each 128-bit lane c: rows of lane c
      for (int q = 0; q < 4; q += 2)
        for (int p = 0; p < 4; ++p) {
          t[4 * q + p] = _mm512_shuffle_f32x4(r[4 * q + p], r[4 * (q + 1) + p], 0x88);
          t[4 * (q + 1) + p] = _mm512_shuffle_f32x4(r[4 * q + p], r[4 * (q + 1) + p], 0xDD);
        }
      for (int p = 0; p < 4; ++p) {
        r[p] = _mm512_shuffle_f32x4(t[p], t[8 + p], 0x88);
        r[8 + p] = _mm512_shuffle_f32x4(t[p], t[8 + p], 0xDD);
        r[4 + p] = _mm512_shuffle_f32x4(t[4 + p], t[12 + p], 0x88);
        r[12 + p] = _mm512_shuffle_f32x4(t[4 + p], t[12 + p], 0xDD);
      }
      // r[g]: row j0 + g of dst, columns k0 .. k0+15
      for (int g = 0; g < 16; ++g) _mm512_storeu_ps(dst + (j0 + g) * ld + k0, r[g]);
    }
    for (; j0 < nr; ++j0)
      for (int64_t k = k0; k < k0 + 16; ++k) dst[j0 * ld + k] = T[k * ldt + j0];
  }
  for (int j = 0; j < nr; ++j)
    for (int64_t k = k0; k < K; ++k) dst[j * ld + k] = T[k * ldt + j];
}
#endif

// Output positions o in [0, n_out) whose input index o * stride + offset lies in [0, size):
// [*lo, *hi) (empty when *lo >= *hi).
inline void valid_range(int64_t offset, int64_t stride, int64_t size, int64_t n_out, int64_t *lo, int64_t *hi) {
  // o * stride + offset >= 0  <=>  o >= ceil(-offset / stride)
  int64_t a = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  // o * stride + offset <= size - 1  <=>  o <= floor((size - 1 - offset) / stride)
  const int64_t top = size - 1 - offset;
  int64_t b = top < 0 ? 0 : top / stride + 1;
  *lo = std::min(a, n_out);
  *hi = std::max(*lo, std::min(b, n_out));
}

}  // namespace

std::string conv_shape(int dims, int64_t batch, int64_t channels, const int64_t *in, const int64_t *kernel,
                       const int64_t *stride, const int64_t *padding, const int64_t *dilation, ConvShape *s) {
  if (dims < 1 || dims > 3) return "expected 1, 2 or 3 spatial dimensions, got " + std::to_string(dims);
  if (batch < 0) return "batch size must be >= 0, got " + std::to_string(batch);
  if (channels < 1) return "channels must be >= 1, got " + std::to_string(channels);
  ConvShape r;
  r.batch = batch;
  r.channels = channels;
  for (int i = 0; i < dims; ++i) {
    const int j = 3 - dims + i;
    const std::string dim = " (spatial dimension " + std::to_string(i) + ")";
    if (in[i] < 1) return "input size must be >= 1, got " + std::to_string(in[i]) + dim;
    if (kernel[i] < 1) return "kernel size must be >= 1, got " + std::to_string(kernel[i]) + dim;
    if (stride[i] < 1) return "stride must be >= 1, got " + std::to_string(stride[i]) + dim;
    if (padding[i] < 0) return "padding must be >= 0, got " + std::to_string(padding[i]) + dim;
    if (dilation[i] < 1) return "dilation must be >= 1, got " + std::to_string(dilation[i]) + dim;
    const int64_t span = (kernel[i] - 1) * dilation[i] + 1;
    if (in[i] + 2 * padding[i] < span)
      return "input spatial size " + std::to_string(in[i]) + " (after padding) is smaller than the kernel span " +
             std::to_string(span) + dim;
    r.in[j] = in[i];
    r.kernel[j] = kernel[i];
    r.stride[j] = stride[i];
    r.padding[j] = padding[i];
    r.dilation[j] = dilation[i];
    r.out[j] = (in[i] + 2 * padding[i] - span) / stride[i] + 1;
  }
  r.image_stride = channels * r.in_volume();
  *s = r;
  return "";
}

void im2col_row(const float *X, const ConvShape &s, bool ones_column, int64_t r, float *x) {
  const int64_t L = s.out_volume();
  const int64_t n = r / L, l = r % L;
  const int64_t o0 = l / (s.out[1] * s.out[2]), o1 = (l / s.out[2]) % s.out[1], o2 = l % s.out[2];
  const float *xn = X + n * s.image_stride;
  for (int64_t c = 0; c < s.channels; ++c) {
    const float *xc = xn + c * s.in_volume();
    for (int64_t k0 = 0; k0 < s.kernel[0]; ++k0) {
      const int64_t i0 = o0 * s.stride[0] - s.padding[0] + k0 * s.dilation[0];
      const bool in0 = i0 >= 0 && i0 < s.in[0];
      for (int64_t k1 = 0; k1 < s.kernel[1]; ++k1) {
        const int64_t i1 = o1 * s.stride[1] - s.padding[1] + k1 * s.dilation[1];
        const bool in1 = in0 && i1 >= 0 && i1 < s.in[1];
        const float *line = xc + (i0 * s.in[1] + i1) * s.in[2];
        for (int64_t k2 = 0; k2 < s.kernel[2]; ++k2) {
          const int64_t i2 = o2 * s.stride[2] - s.padding[2] + k2 * s.dilation[2];
          *x++ = (in1 && i2 >= 0 && i2 < s.in[2]) ? line[i2] : 0.0f;
        }
      }
    }
  }
  if (ones_column) *x = 1.0f;
}

void im2col(const float *X, const ConvShape &s, bool ones_column, float *cols, int64_t ld) {
  const int64_t rows = s.rows();
  if (rows <= 0) return;
#ifdef RPU_IM2COL_X86
  if (simd_level() == 2) {
    // Blocks of rows unfolded in the columns layout (in cache), then transposed into place.
    constexpr int R = 64;
    const int64_t K = s.cols() + (ones_column ? 1 : 0);
    parallel_for_dynamic((rows + R - 1) / R, 4, [&](int64_t b, int64_t e) {
      ColumnsBlock cb;
      std::vector<float> T((size_t)K * R);
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t r0 = blk * R;
        const int nr = (int)std::min<int64_t>(R, rows - r0);
        cb.prepare(s, r0, nr);
        cb.fill(X, ones_column, 0, K, T.data(), R);
        transpose_block(T.data(), R, nr, K, cols + r0 * ld, ld);
      }
    });
    return;
  }
#endif
  const int64_t L2 = s.out[2], K2 = s.kernel[2], kv = s.kernel_volume();
  const int64_t K = s.cols();
  // Work items: one output line (n, l0, l1) each, all its l2 positions.
  const int64_t lines = rows / L2;
  parallel_for_dynamic(lines, std::max<int64_t>(1, 64 / L2), [&](int64_t b, int64_t e) {
    for (int64_t line = b; line < e; ++line) {
      const int64_t n = line / (s.out[0] * s.out[1]);
      const int64_t o0 = (line / s.out[1]) % s.out[0], o1 = line % s.out[1];
      float *row0 = cols + line * L2 * ld;
      const float *xn = X + n * s.image_stride;
      for (int64_t c = 0; c < s.channels; ++c) {
        const float *xc = xn + c * s.in_volume();
        for (int64_t k0 = 0; k0 < s.kernel[0]; ++k0) {
          const int64_t i0 = o0 * s.stride[0] - s.padding[0] + k0 * s.dilation[0];
          const bool in0 = i0 >= 0 && i0 < s.in[0];
          for (int64_t k1 = 0; k1 < s.kernel[1]; ++k1) {
            const int64_t i1 = o1 * s.stride[1] - s.padding[1] + k1 * s.dilation[1];
            const int64_t col0 = c * kv + (k0 * s.kernel[1] + k1) * K2;
            if (!(in0 && i1 >= 0 && i1 < s.in[1])) {
              for (int64_t o2 = 0; o2 < L2; ++o2) std::memset(row0 + o2 * ld + col0, 0, sizeof(float) * K2);
              continue;
            }
            const float *line_in = xc + (i0 * s.in[1] + i1) * s.in[2];
            for (int64_t o2 = 0; o2 < L2; ++o2) {
              float *out = row0 + o2 * ld + col0;
              const int64_t base = o2 * s.stride[2] - s.padding[2];
              for (int64_t k2 = 0; k2 < K2; ++k2) {
                const int64_t i2 = base + k2 * s.dilation[2];
                out[k2] = (i2 >= 0 && i2 < s.in[2]) ? line_in[i2] : 0.0f;
              }
            }
          }
        }
      }
      if (ones_column)
        for (int64_t o2 = 0; o2 < L2; ++o2) row0[o2 * ld + K] = 1.0f;
    }
  });
}

void transpose_block(const float *T, int64_t ldt, int nr, int64_t K, float *dst, int64_t ld) {
#ifdef RPU_IM2COL_X86
  if (simd_level() == 2) return transpose_avx512(T, ldt, nr, K, dst, ld);
#endif
  for (int j = 0; j < nr; ++j)
    for (int64_t k = 0; k < K; ++k) dst[j * ld + k] = T[k * ldt + j];
}

void ColumnsBlock::prepare(const ConvShape &shape, int64_t r0, int rows) {
  s = shape;
  n_rows = rows;
  runs.clear();
  line_off.clear();
  lo.clear();
  hi.clear();
  const int64_t L = s.out_volume(), L2 = s.out[2];
  for (int64_t j = 0; j < n_rows;) {
    const int64_t r = r0 + j;
    const int64_t n = r / L, l = r % L;
    const int64_t o0 = l / (s.out[1] * L2), o1 = (l / L2) % s.out[1];
    const Run run{n * s.image_stride, l % L2, std::min<int64_t>(L2 - l % L2, n_rows - j), j};
    runs.push_back(run);
    for (int64_t k0 = 0; k0 < s.kernel[0]; ++k0)
      for (int64_t k1 = 0; k1 < s.kernel[1]; ++k1) {
        const int64_t i0 = o0 * s.stride[0] - s.padding[0] + k0 * s.dilation[0];
        const int64_t i1 = o1 * s.stride[1] - s.padding[1] + k1 * s.dilation[1];
        const bool inside = i0 >= 0 && i0 < s.in[0] && i1 >= 0 && i1 < s.in[1];
        line_off.push_back(inside ? (i0 * s.in[1] + i1) * s.in[2] : -1);
      }
    for (int64_t k2 = 0; k2 < s.kernel[2]; ++k2) {
      int64_t a, b;
      valid_range(k2 * s.dilation[2] - s.padding[2], s.stride[2], s.in[2], run.o2 + run.len, &a, &b);
      a = std::max(a, run.o2);
      lo.push_back(a - run.o2);
      hi.push_back(std::max(b, a) - run.o2);
    }
    j += run.len;
  }
}

void ColumnsBlock::fill(const float *X, bool ones_column, int64_t k_begin, int64_t k_end, float *T,
                        int64_t ldt) const {
#ifdef RPU_IM2COL_X86
  if (simd_level() == 2) return fill_avx512(*this, X, ones_column, k_begin, k_end, T, ldt);
#endif
  const int64_t k_cols = s.cols(), K2 = s.kernel[2], K01 = s.kernel[0] * s.kernel[1], V = s.in_volume();
  const int64_t st2 = s.stride[2];
  for (int64_t k = std::max(k_begin, k_cols); k < k_end; ++k) {  // the ones column
    float *__restrict t = T + (k - k_begin) * ldt;
    for (int j = 0; j < n_rows; ++j) t[j] = ones_column ? 1.0f : 0.0f;
  }
  const int64_t k_stop = std::min(k_end, k_cols);
  for (size_t u = 0; u < runs.size(); ++u) {
    const Run &run = runs[u];
    for (int64_t c = k_begin / (K01 * K2); c * K01 * K2 < k_stop; ++c)
      for (int64_t k01 = 0; k01 < K01; ++k01) {
        const int64_t off = line_off[u * K01 + k01];
        for (int64_t k2 = 0; k2 < K2; ++k2) {
          const int64_t k = (c * K01 + k01) * K2 + k2;
          if (k < k_begin || k >= k_stop) continue;
          float *__restrict dst = T + (k - k_begin) * ldt + run.j;
          const int64_t a = off < 0 ? run.len : lo[u * K2 + k2], b = off < 0 ? run.len : hi[u * K2 + k2];
          for (int64_t i = 0; i < a; ++i) dst[i] = 0.0f;
          if (b > a) {
            const float *__restrict line = X + run.img + c * V + off;
            const int64_t i2 = run.o2 * st2 + k2 * s.dilation[2] - s.padding[2];  // input index of row i = 0
            if (st2 == 1) {
              for (int64_t i = a; i < b; ++i) dst[i] = line[i2 + i];
            } else {
              for (int64_t i = a; i < b; ++i) dst[i] = line[i2 + i * st2];
            }
          }
          for (int64_t i = std::max(a, b); i < run.len; ++i) dst[i] = 0.0f;
        }
      }
  }
}

void col2im(const float *cols, int64_t ld, const ConvShape &s, Col2imOrder order, float *DX) {
  const int64_t planes = s.batch * s.channels;
  if (planes <= 0) return;
  const int64_t L = s.out_volume(), kv = s.kernel_volume(), V = s.in_volume();
  if (order == Col2imOrder::Columns) {
    parallel_for_dynamic(planes, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const int64_t n = p / s.channels, c = p % s.channels;
        float *dx = DX + n * s.image_stride + c * V;
        std::memset(dx, 0, sizeof(float) * V);
        const float *g = cols + n * L * ld + c * kv;  // column c * kv of row (n, 0)
        for (int64_t k0 = 0; k0 < s.kernel[0]; ++k0)
          for (int64_t k1 = 0; k1 < s.kernel[1]; ++k1)
            for (int64_t k2 = 0; k2 < s.kernel[2]; ++k2) {
              const int64_t k = (k0 * s.kernel[1] + k1) * s.kernel[2] + k2;
              int64_t a0, b0, a1, b1, a2, b2;
              valid_range(k0 * s.dilation[0] - s.padding[0], s.stride[0], s.in[0], s.out[0], &a0, &b0);
              valid_range(k1 * s.dilation[1] - s.padding[1], s.stride[1], s.in[1], s.out[1], &a1, &b1);
              valid_range(k2 * s.dilation[2] - s.padding[2], s.stride[2], s.in[2], s.out[2], &a2, &b2);
              const int64_t off2 = k2 * s.dilation[2] - s.padding[2];
              for (int64_t o0 = a0; o0 < b0; ++o0) {
                const int64_t i0 = o0 * s.stride[0] - s.padding[0] + k0 * s.dilation[0];
                for (int64_t o1 = a1; o1 < b1; ++o1) {
                  const int64_t i1 = o1 * s.stride[1] - s.padding[1] + k1 * s.dilation[1];
                  float *line = dx + (i0 * s.in[1] + i1) * s.in[2];
                  const float *src = g + ((o0 * s.out[1] + o1) * s.out[2]) * ld + k;
                  for (int64_t o2 = a2; o2 < b2; ++o2) line[o2 * s.stride[2] + off2] += src[o2 * ld];
                }
              }
            }
      }
    });
    return;
  }
  // Nested windows: for each dimension and input index i, the (window o, kernel offset k) pairs
  // that read it, in ascending o: i + padding = o * stride + k * dilation.
  struct Tap {
    int64_t o, k;
  };
  std::vector<std::vector<Tap>> taps[3];
  for (int d = 0; d < 3; ++d) {
    taps[d].resize(s.in[d]);
    for (int64_t i = 0; i < s.in[d]; ++i)
      for (int64_t o = 0; o < s.out[d]; ++o) {
        const int64_t off = i + s.padding[d] - o * s.stride[d];
        if (off >= 0 && off % s.dilation[d] == 0 && off / s.dilation[d] < s.kernel[d])
          taps[d][i].push_back(Tap{o, off / s.dilation[d]});
      }
  }
  parallel_for_dynamic(planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t n = p / s.channels, c = p % s.channels;
      float *dx = DX + n * s.image_stride + c * V;
      const float *g = cols + n * L * ld + c * kv;
      for (int64_t i0 = 0; i0 < s.in[0]; ++i0)
        for (int64_t i1 = 0; i1 < s.in[1]; ++i1)
          for (int64_t i2 = 0; i2 < s.in[2]; ++i2) {
            float acc0 = 0.0f;
            for (const Tap &t0 : taps[0][i0]) {
              float acc1 = 0.0f;
              for (const Tap &t1 : taps[1][i1]) {
                float acc2 = 0.0f;
                for (const Tap &t2 : taps[2][i2]) {
                  const int64_t r = (t0.o * s.out[1] + t1.o) * s.out[2] + t2.o;
                  const int64_t k = (t0.k * s.kernel[1] + t1.k) * s.kernel[2] + t2.k;
                  acc2 += g[r * ld + k];
                }
                acc1 += acc2;
              }
              acc0 += acc1;
            }
            dx[(i0 * s.in[1] + i1) * s.in[2] + i2] = acc0;
          }
    }
  });
}

}  // namespace rpu
