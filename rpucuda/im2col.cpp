#include "im2col.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "threading.h"

namespace rpu {
namespace {

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
  const int64_t L2 = s.out[2], K2 = s.kernel[2], kv = s.kernel_volume();
  const int64_t K = s.cols();
  // Work items: one output line (n, l0, l1) each, all its l2 positions.
  const int64_t lines = rows / L2;
  parallel_for(lines, std::max<int64_t>(1, 64 / L2), [&](int64_t b, int64_t e) {
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
    parallel_for(planes, 1, [&](int64_t b, int64_t e) {
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
  parallel_for(planes, 1, [&](int64_t b, int64_t e) {
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
