// The element loops must not be contracted into FMA (the AVX-512 versions would allow it): the
// same options for every function of this file, so that the inline helpers of io_math.h inline
// everywhere.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "io_pipeline.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "analog_gemm.h"
#include "io_math.h"
#include "rng.h"
#include "threading.h"

// The hot element loops (noise-management scan, DAC, output noise + ADC) are compiled for
// AVX-512F, AVX2 and the baseline ISA and picked at run time (simd_level(), rng.h).  They use
// only exactly rounded operations in a fixed order, so every version gives bit-identical results
// (RPU_SIMD=generic forces the baseline code; define RPU_IO_GENERIC to build only that).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__) && \
    !defined(RPU_IO_GENERIC)
#define RPU_IO_X86 1
#endif

#if defined(__GNUC__)
#define RPU_AI inline __attribute__((always_inline))
#else
#define RPU_AI inline
#endif

namespace rpu {
namespace {

// ---- element kernels ------------------------------------------------------------------------
// Each kernel is a body template (kHw: the instruction set has a floor instruction, SSE4.1+)
// instantiated as name_generic, name_avx2 and name_avx512; IO_CALL(name, (args)) picks one.

// max|x|, max x (NaNs skipped) and whether x has a NaN.
template <bool kHw>
RPU_AI void scan_row_body(const float *__restrict x, int L, float *amax_out, float *mx_out, int *nan_out) {
  float amax = 0.0f, mx = -INFINITY;
  int nan = 0;
#pragma omp simd reduction(max : amax, mx) reduction(| : nan)
  for (int i = 0; i < L; ++i) {
    const float v = x[i];
    const float av = fabsf(v);
    amax = av > amax ? av : amax;
    mx = v > mx ? v : mx;
    nan |= (v != v);
  }
  *amax_out = amax;
  *mx_out = mx;
  *nan_out = nan;
}

// DAC of one row: q = quantize_clip(x * f) (+ noise * z).  u: uniforms for stochastic rounding
// (nullptr: deterministic; only with step > 0), z: normals of the input noise (nullptr: none).
template <bool kHw>
struct DacBody {
  const float *__restrict x;
  int L;
  float f, step, bound;
  const float *__restrict u;
  float *__restrict q;
  template <bool kQ, bool kC>
  RPU_AI void run() {
    if (kQ && u != nullptr) {
      for (int i = 0; i < L; ++i) q[i] = quantize_clip_t<kQ, kC, true, kHw>(x[i] * f, step, bound, u[i]);
    } else {
      for (int i = 0; i < L; ++i) q[i] = quantize_clip_t<kQ, kC, false, kHw>(x[i] * f, step, bound, 0.0f);
    }
  }
};
template <bool kHw>
RPU_AI void dac_row_body(const float *__restrict x, int L, float f, float step, float bound, const float *__restrict u,
                         float noise, const float *__restrict z, float *__restrict q) {
  DacBody<kHw> b{x, L, f, step, bound, u, q};
  dispatch_qc(step, bound, b);
  if (z != nullptr)
    for (int i = 0; i < L; ++i) q[i] += noise * z[i];
}

// y += noise * z (z may be nullptr: no noise); returns the number of |y| >= bound (check only).
template <bool kHw>
RPU_AI int noise_sat_body(float *__restrict y, int L, float noise, const float *__restrict z, bool check,
                          float bound) {
  if (z != nullptr)
    for (int o = 0; o < L; ++o) y[o] += noise * z[o];
  int cnt = 0;
  if (check)
    for (int o = 0; o < L; ++o) cnt += fabsf(y[o]) >= bound;
  return cnt;
}

// The same followed by the ADC in one pass: yo = f * quantize_clip(y + noise * z) (deterministic
// rounding).  Returns the number of |y + noise z| >= sat_bound (check only); the output is
// written in any case (a row that is redone is overwritten later).
template <bool kHw>
struct NoiseSatAdcBody {
  const float *__restrict y;
  int L;
  float noise;
  const float *__restrict z;
  bool check;
  float sat_bound, f, step, bound;
  float *__restrict yo;
  int cnt;
  template <bool kQ, bool kC>
  RPU_AI void run() {
    int c = 0;
    if (z != nullptr) {
      if (check) {
        for (int o = 0; o < L; ++o) {
          const float v = y[o] + noise * z[o];
          c += fabsf(v) >= sat_bound;
          yo[o] = f * quantize_clip_t<kQ, kC, false, kHw>(v, step, bound, 0.0f);
        }
      } else {
        for (int o = 0; o < L; ++o)
          yo[o] = f * quantize_clip_t<kQ, kC, false, kHw>(y[o] + noise * z[o], step, bound, 0.0f);
      }
    } else {
      if (check) {
        for (int o = 0; o < L; ++o) {
          const float v = y[o];
          c += fabsf(v) >= sat_bound;
          yo[o] = f * quantize_clip_t<kQ, kC, false, kHw>(v, step, bound, 0.0f);
        }
      } else {
        for (int o = 0; o < L; ++o) yo[o] = f * quantize_clip_t<kQ, kC, false, kHw>(y[o], step, bound, 0.0f);
      }
    }
    cnt = c;
  }
};
template <bool kHw>
RPU_AI int noise_sat_adc_body(const float *__restrict y, int L, float noise, const float *__restrict z, bool check,
                              float sat_bound, float f, float step, float bound, float *__restrict yo) {
  NoiseSatAdcBody<kHw> b{y, L, noise, z, check, sat_bound, f, step, bound, yo, 0};
  dispatch_qc(step, bound, b);
  return b.cnt;
}

// ADC of one row: yo (+)= f * quantize_clip(y) (u: uniforms for stochastic rounding or nullptr).
template <bool kHw>
struct AdcBody {
  const float *__restrict y;
  int L;
  float f, step, bound;
  const float *__restrict u;
  bool accumulate;
  float *__restrict yo;
  template <bool kQ, bool kC>
  RPU_AI void run() {
    if (kQ && u != nullptr) {
      if (accumulate)
        for (int o = 0; o < L; ++o) yo[o] += f * quantize_clip_t<kQ, kC, true, kHw>(y[o], step, bound, u[o]);
      else
        for (int o = 0; o < L; ++o) yo[o] = f * quantize_clip_t<kQ, kC, true, kHw>(y[o], step, bound, u[o]);
    } else if (accumulate) {
      for (int o = 0; o < L; ++o) yo[o] += f * quantize_clip_t<kQ, kC, false, kHw>(y[o], step, bound, 0.0f);
    } else {
      for (int o = 0; o < L; ++o) yo[o] = f * quantize_clip_t<kQ, kC, false, kHw>(y[o], step, bound, 0.0f);
    }
  }
};
template <bool kHw>
RPU_AI void adc_row_body(const float *__restrict y, int L, float f, float step, float bound, const float *__restrict u,
                         bool accumulate, float *__restrict yo) {
  AdcBody<kHw> b{y, L, f, step, bound, u, accumulate, yo};
  dispatch_qc(step, bound, b);
}

// Weight read noise of L weights: out = w + sd * z, sd = w_noise (* sqrt|w| for PCM read noise).
template <bool kHw>
RPU_AI void weight_noise_body(const float *__restrict w, const float *__restrict z, int L, float w_noise, bool pcm,
                              float *__restrict out) {
  if (pcm) {
    for (int i = 0; i < L; ++i) out[i] = w[i] + (w_noise * sqrtf(fabsf(w[i]))) * z[i];
  } else {
    for (int i = 0; i < L; ++i) out[i] = w[i] + w_noise * z[i];
  }
}

#ifdef RPU_IO_X86
#define RPU_IO_KERNEL(ret, name, params, args)                                                        \
  ret name##_generic params { return name##_body<false> args; }                                      \
  __attribute__((target("avx2"))) ret name##_avx2 params { return name##_body<true> args; }          \
  __attribute__((target("avx512f"))) ret name##_avx512 params { return name##_body<true> args; }
#define IO_CALL(name, args) \
  (g_simd == 2 ? name##_avx512 args : (g_simd == 1 ? name##_avx2 args : name##_generic args))
#else
#define RPU_IO_KERNEL(ret, name, params, args) \
  ret name##_generic params { return name##_body<false> args; }
#define IO_CALL(name, args) name##_generic args
#endif

RPU_IO_KERNEL(void, scan_row, (const float *x, int L, float *amax, float *mx, int *nan), (x, L, amax, mx, nan))
RPU_IO_KERNEL(void, dac_row,
              (const float *x, int L, float f, float step, float bound, const float *u, float noise, const float *z,
               float *q),
              (x, L, f, step, bound, u, noise, z, q))
RPU_IO_KERNEL(int, noise_sat, (float *y, int L, float noise, const float *z, bool check, float bound),
              (y, L, noise, z, check, bound))
RPU_IO_KERNEL(int, noise_sat_adc,
              (const float *y, int L, float noise, const float *z, bool check, float sat_bound, float f, float step,
               float bound, float *yo),
              (y, L, noise, z, check, sat_bound, f, step, bound, yo))
RPU_IO_KERNEL(void, adc_row,
              (const float *y, int L, float f, float step, float bound, const float *u, bool accumulate, float *yo),
              (y, L, f, step, bound, u, accumulate, yo))
RPU_IO_KERNEL(void, weight_noise, (const float *w, const float *z, int L, float w_noise, bool pcm, float *out),
              (w, z, L, w_noise, pcm, out))

// ---- helpers ----------------------------------------------------------------------------------

inline void fill_normal(float *out, int L, const MVMCall &r, uint32_t tag, uint32_t sub, uint64_t base) {
  fill_normal_bulk(out, L, r.seed, tag, sub, r.call, base);
}

inline void fill_uniform(float *out, int L, const MVMCall &r, uint32_t tag, uint32_t sub, uint64_t base) {
  fill_uniform_bulk(out, L, r.seed, tag, sub, r.call, base);
}

inline float res_fraction(float res) {
  if (res <= 0.0f) return 0.0f;
  return res > 1.0f ? 1.0f / res : res;
}

// Element (row, col) of the effective matrix A; A is W or W^T.
struct Block {
  int o0, o1, i0, i1;  // output and input ranges of this tile
  int id;
};

constexpr int kSubRows = 128;   // rows multiplied at once by one worker (cache-sized)
constexpr int kColAlign = 16;   // column slices of the small-batch path start at multiples of this
                                // (a multiple of 4: the output noise of a slice starts at a block)
constexpr int kSmallRows = 4;   // row grain of the row-parallel path: up to this many rows, the
                                // outputs are split over the threads instead

}  // namespace

const float *read_weights(const float *W, int M, int K, const IOParameters &io, const MVMCall &rng,
                          std::vector<float> &buffer) {
  if (!(io.w_noise > 0.0f && io.w_noise_type != WeightNoiseType::None)) return W;
  const int g_simd = simd_level();
  buffer.resize((size_t)M * K);
  const int64_t total = (int64_t)M * K;
  const bool pcm = io.w_noise_type == WeightNoiseType::PCMRead;
  const float w_noise = io.w_noise;
  constexpr int64_t kChunk = 4096;  // a multiple of 4 (bulk normals start at a block)
  float *wn = buffer.data();
  parallel_for_dynamic((total + kChunk - 1) / kChunk, 4, [&](int64_t b, int64_t e) {
    float z[kChunk];
    for (int64_t c = b; c < e; ++c) {
      const int64_t i0 = c * kChunk;
      const int L = (int)std::min<int64_t>(kChunk, total - i0);
      fill_normal_bulk(z, L, rng.seed, TAG_W_NOISE, 0, rng.call, (uint64_t)i0);
      IO_CALL(weight_noise, (W + i0, z, L, w_noise, pcm, wn + i0));
    }
  });
  return wn;
}

float bound_management_limit(const IOParameters &io) {
  float r_limit = io.max_bm_factor;
  const float inp_frac = res_fraction(io.inp_res);
  if (inp_frac > 0.0f) r_limit = std::min(r_limit, io.max_bm_res / inp_frac);
  return r_limit;
}

float bound_management_factor(const IOParameters &io, int it, float s, float r, const float *x, int Li,
                              const std::function<float()> &tile_wmax) {
  const float r_limit = bound_management_limit(io);
  float r_next = 2.0f * r;
  if (io.bound_management == BoundManagementType::IterativeWorstCase && it == 0) {
    // Worst case: the input L1 norm times the largest |A| entry of this tile.
    double l1 = 0.0;
    for (int i = 0; i < Li; ++i) l1 += fabsf(x[i]) / (s * r);
    float rw = (float)(l1 * tile_wmax() / io.out_bound) * r;
    r_next = fmaxf(r_next, std::exp2(std::ceil(std::log2(fmaxf(rw, 1.0f)))));
    r_next = fminf(r_next, r_limit);
  }
  return (r_next <= r_limit && r_next > r) ? r_next : 0.0f;
}

void io_mvm(const float *W, int M, int K, bool transposed, const float *X, int N, float *Y,
            const IOParameters &io, const MappingParameter &map, bool bound_management,
            const float *alpha, int n_alpha, const MVMCall &rng) {
  const int out = transposed ? K : M;
  const int in = transposed ? M : K;
  if (N <= 0 || out <= 0) return;
  const int ld_w = K;
  const int g_simd = simd_level();

  auto apply_alpha_scale = [&](float *y_row, int o0, int o1, float f) {
    for (int o = o0; o < o1; ++o) {
      float a = alpha == nullptr ? 1.0f : (n_alpha == 1 ? alpha[0] : alpha[o]);
      y_row[o] *= f * a;
    }
  };

  if (io.is_perfect) {
    // Y = X A^T : A = W -> X W^T ; A = W^T -> X W, in the order of analog_gemm.h (so the same
    // values for any thread count), split over rows or, for a few rows, over outputs.
    const int T = get_num_threads();
    const int64_t macs = (int64_t)N * in * out;
    if (serial_work(macs) || N >= 4 * T || T == 1 || out < 2 * kColAlign) {
      parallel_for_dynamic(N, grain_for(N, 4, macs), [&](int64_t b, int64_t e) {
        analog_gemm(transposed, (int)(e - b), out, in, X + b * in, in, W, ld_w, Y + b * out, out);
      });
    } else {
      int chunk = (out + T - 1) / T;
      chunk = (chunk + kColAlign - 1) / kColAlign * kColAlign;
      parallel_for((out + chunk - 1) / chunk, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t c = cb; c < ce; ++c) {
          const int c0 = (int)c * chunk, c1 = std::min(out, c0 + chunk);
          analog_gemm(transposed, N, c1 - c0, in, X, in, transposed ? W + c0 : W + (int64_t)c0 * ld_w, ld_w, Y + c0,
                      out);
        }
      });
    }
    if (io.out_scale != 1.0f || alpha != nullptr)
      parallel_for_dynamic(N, 16, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) apply_alpha_scale(Y + n * out, 0, out, io.out_scale);
      });
    return;
  }

  // Weight read noise: one noisy copy of W per call (SPEC §1.5).
  static thread_local std::vector<float> tl_w_noisy;
  const float *Wu = read_weights(W, M, K, io, rng, tl_w_noisy);

  // The tile grid (physical tiles: rows of W by max_output_size, columns by max_input_size).
  const int tile_rows = std::max(1, map.max_output_size), tile_cols = std::max(1, map.max_input_size);
  const int in_chunk = transposed ? tile_rows : tile_cols;
  const int out_chunk = transposed ? tile_cols : tile_rows;
  const int n_in_chunks = (in + in_chunk - 1) / in_chunk;
  const int n_out_chunks = (out + out_chunk - 1) / out_chunk;
  static thread_local std::vector<Block> tl_blocks;
  std::vector<Block> &blocks = tl_blocks;
  blocks.clear();
  for (int oc = 0; oc < n_out_chunks; ++oc)
    for (int ic = 0; ic < n_in_chunks; ++ic) {
      Block bl;
      bl.o0 = oc * out_chunk;
      bl.o1 = std::min(out, bl.o0 + out_chunk);
      bl.i0 = ic * in_chunk;
      bl.i1 = std::min(in, bl.i0 + in_chunk);
      bl.id = (int)blocks.size();
      blocks.push_back(bl);
    }
  const uint64_t n_blocks = blocks.size();
  // With one tile along the input, every output element is written exactly once (rows with a
  // zero scale are zeroed explicitly), so Y need not be cleared and re-read.
  const bool accumulate = n_in_chunks > 1;
  if (accumulate) std::memset(Y, 0, sizeof(float) * (size_t)N * out);

  const float inp_step = quant_step(io.inp_res, io.inp_bound);
  const float out_step = quant_step(io.out_res, io.out_bound);
  const bool use_bm = bound_management && io.bound_management != BoundManagementType::None &&
                      io.out_bound > 0.0f;

  // Per-row state shared by the workers (each row is written by one worker only).
  static thread_local std::vector<float> tl_s, tl_r;
  static thread_local std::vector<int> tl_rows, tl_next;
  static thread_local std::vector<char> tl_redo;
  std::vector<float> &s = tl_s, &r = tl_r;
  std::vector<int> &rows = tl_rows, &next_rows = tl_next;
  std::vector<char> &redo = tl_redo;
  s.resize(N);
  r.resize(N);

  auto row_scale = [&](const float *x, int Li, float *amax_out) {
    float amax, mx;
    int nan;
    IO_CALL(scan_row, (x, Li, &amax, &mx, &nan));
    if (nan) amax = NAN;  // a NaN input makes the scale NaN
    *amax_out = amax;
    return noise_scale(io, amax, mx);
  };

  // Loop constants as locals: the output buffers are float*, so without this the compiler must
  // assume they alias the parameter struct.
  const float inp_bound = io.inp_bound, out_bound = io.out_bound;
  const float inp_noise = io.inp_noise, out_noise = io.out_noise;
  const bool inp_sto = io.inp_sto_round && inp_step > 0.0f, out_sto = io.out_sto_round && out_step > 0.0f;
  const bool average_nm = io.noise_management == NoiseManagementType::AverageAbsMax;
  // Common case (one tile along the input, deterministic ADC): output noise, saturation check and
  // ADC in one pass; a row that is redone is overwritten by its next iteration.
  const bool fused = !accumulate && !out_sto;
  const int n_threads = get_num_threads();

  for (const Block &bl : blocks) {
    const int Li = bl.i1 - bl.i0, Lo = bl.o1 - bl.o0;
    const float *A = transposed ? Wu + (int64_t)bl.i0 * ld_w + bl.o0 : Wu + (int64_t)bl.o0 * ld_w + bl.i0;
    if (average_nm) {
      // The batch-wide scale needs every row first.
      std::vector<float> amax_row(N);
      parallel_for_dynamic(N, 16, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) s[n] = row_scale(X + n * in + bl.i0, Li, &amax_row[n]);
      });
      double avg = 0.0;
      for (int n = 0; n < N; ++n) avg += amax_row[n];
      float sa = (float)(avg / N);
      if (io.nm_thres > 0.0f && sa > io.nm_thres) sa = io.nm_thres;
      for (int n = 0; n < N; ++n) s[n] = (s[n] == 0.0f || s[n] != s[n]) ? s[n] : sa;
    }
    // Worst-case bound management: the largest |A| entry of this tile (order-independent max),
    // computed when a row first needs it.
    float wmax = 0.0f;
    std::once_flag wmax_once;
    auto tile_wmax = [&]() {
      std::call_once(wmax_once, [&] {
        float m = 0.0f;
        for (int o = bl.o0; o < bl.o1; ++o)
          for (int i = bl.i0; i < bl.i1; ++i) {
            float w = transposed ? Wu[(int64_t)i * ld_w + o] : Wu[(int64_t)o * ld_w + i];
            m = fmaxf(m, fabsf(w));
          }
        wmax = m;
      });
      return wmax;
    };
    rows.resize(N);
    for (int n = 0; n < N; ++n) {
      rows[n] = n;
      r[n] = 1.0f;
    }

    // Noise management and DAC of active row a into q (SPEC §1.2-1.4); false for a zero row
    // (zero output; NaN rows go on: their output is NaN).  tmp, tmp2: scratch of >= Li floats.
    auto prepare_row = [&](int a, int it, float *q, float *tmp, float *tmp2) -> bool {
      const int n = rows[a];
      if (it == 0 && !average_nm) {
        float amax;
        s[n] = row_scale(X + (int64_t)n * in + bl.i0, Li, &amax);
      }
      if (s[n] == 0.0f) {
        if (!accumulate) std::memset(Y + (int64_t)n * out + bl.o0, 0, sizeof(float) * Lo);
        return false;
      }
      const float *x = X + (int64_t)n * in + bl.i0;
      const float f = 1.0f / (s[n] * r[n]);
      const uint64_t base = noise_base(n, (int)n_blocks, bl.id);
      const float *u = nullptr, *z = nullptr;
      if (inp_sto) {
        fill_uniform(tmp, Li, rng, TAG_INP_STO_ROUND, it, base);
        u = tmp;
      }
      if (inp_noise > 0.0f) {
        fill_normal(tmp2, Li, rng, TAG_INP_NOISE, it, base);
        z = tmp2;
      }
      IO_CALL(dac_row, (x, Li, f, inp_step, inp_bound, u, inp_noise, z, q));
      return true;
    };

    // Bound management (SPEC §1.8) for active row a whose output saturated: true if it is redone.
    auto retry = [&](int a, int it) -> bool {
      const int n = rows[a];
      const float r_next = bound_management_factor(io, it, s[n], r[n], X + (int64_t)n * in + bl.i0, Li, tile_wmax);
      if (r_next > 0.0f) {
        r[n] = r_next;
        redo[a] = 1;
        return true;
      }
      return false;
    };

    // The final ADC of an accepted row when it was not fused with the noise pass.
    auto finish_row = [&](int a, int it, const float *y, float *tmp) {
      const int n = rows[a];
      const uint64_t base = noise_base(n, (int)n_blocks, bl.id);
      const float *u = nullptr;
      if (out_sto) {
        fill_uniform(tmp, Lo, rng, TAG_OUT_STO_ROUND, it, base);
        u = tmp;
      }
      IO_CALL(adc_row, (y, Lo, s[n] * r[n], out_step, out_bound, u, accumulate, Y + (int64_t)n * out + bl.o0));
    };

    for (int it = 0; !rows.empty(); ++it) {
      const int Na = (int)rows.size();
      redo.assign(Na, 0);
      const int64_t macs = (int64_t)Na * Li * Lo;
      if (!serial_work(macs) && Na <= kSmallRows && n_threads > 1 && Lo >= 2 * kColAlign) {
        // Few rows: the rows are prepared here, the outputs are split over the threads (each
        // thread multiplies all rows with a slice of the tile and adds the noise of its slice),
        // then the rows are accepted or redone here.  (The analog product of an element does
        // not depend on the slicing: analog_gemm.h.)
        static thread_local std::vector<float> xq, yb, tmp, tmp2;
        static thread_local std::vector<int> act, sat_cnt;
        act.clear();
        xq.resize((size_t)Na * Li);
        yb.resize((size_t)Na * Lo);
        tmp.resize(std::max(Li, Lo));
        tmp2.resize(std::max(Li, Lo));
        for (int a = 0; a < Na; ++a)
          if (prepare_row(a, it, xq.data() + act.size() * (size_t)Li, tmp.data(), tmp2.data())) act.push_back(a);
        const int na = (int)act.size();
        if (na > 0) {
          int chunk = (Lo + n_threads - 1) / n_threads;
          chunk = (chunk + kColAlign - 1) / kColAlign * kColAlign;
          const int n_chunks = (Lo + chunk - 1) / chunk;
          sat_cnt.assign((size_t)na * n_chunks, 0);
          const float *xqp = xq.data();
          float *ybp = yb.data();
          int *satp = sat_cnt.data();
          const int *actp = act.data();  // (thread_local: the workers must not name it)
          parallel_for(n_chunks, 1, [&](int64_t cb, int64_t ce) {
            static thread_local std::vector<float> z;
            z.resize(chunk);
            for (int64_t c = cb; c < ce; ++c) {
              const int c0 = (int)c * chunk, c1 = std::min(Lo, c0 + chunk), Lc = c1 - c0;
              const float *Ac = transposed ? A + c0 : A + (int64_t)c0 * ld_w;
              analog_gemm(transposed, na, Lc, Li, xqp, Li, Ac, ld_w, ybp + c0, Lo);
              for (int k = 0; k < na; ++k) {
                const int n = rows[actp[k]];
                float *y = ybp + (int64_t)k * Lo + c0;
                const uint64_t base = noise_base(n, (int)n_blocks, bl.id);
                const float *zp = nullptr;
                if (out_noise > 0.0f) {
                  fill_normal(z.data(), Lc, rng, TAG_OUT_NOISE, it, base + (uint64_t)c0);
                  zp = z.data();
                }
                if (fused)
                  satp[(size_t)k * n_chunks + c] =
                      IO_CALL(noise_sat_adc, (y, Lc, out_noise, zp, use_bm, out_bound, s[n] * r[n], out_step,
                                              out_bound, Y + (int64_t)n * out + bl.o0 + c0));
                else
                  satp[(size_t)k * n_chunks + c] = IO_CALL(noise_sat, (y, Lc, out_noise, zp, use_bm, out_bound));
              }
            }
          });
          for (int k = 0; k < na; ++k) {
            const int a = act[k];
            int cnt = 0;
            for (int c = 0; c < n_chunks; ++c) cnt += sat_cnt[(size_t)k * n_chunks + c];
            if (cnt > 0 && retry(a, it)) continue;
            if (!fused) finish_row(a, it, yb.data() + (int64_t)k * Lo, tmp.data());
          }
        }
      } else {
        // Each worker takes a slice of the rows through the whole pipeline: noise management,
        // DAC, its own single-threaded product, output noise, ADC, bound-management decision.
        parallel_for_dynamic(Na, grain_for(Na, kSmallRows, macs), [&](int64_t b, int64_t e) {
          static thread_local std::vector<float> xq, yb, tmp, tmp2;
          static thread_local std::vector<int> act;
          for (int64_t c0 = b; c0 < e; c0 += kSubRows) {
            const int64_t c1 = std::min<int64_t>(e, c0 + kSubRows);
            act.clear();
            xq.resize((size_t)(c1 - c0) * Li);
            yb.resize((size_t)(c1 - c0) * Lo);
            tmp.resize(std::max(Li, Lo));
            tmp2.resize(std::max(Li, Lo));
            for (int64_t a = c0; a < c1; ++a)
              if (prepare_row((int)a, it, xq.data() + act.size() * (size_t)Li, tmp.data(), tmp2.data()))
                act.push_back((int)a);
            const int na = (int)act.size();
            if (na == 0) continue;
            // Analog product of this tile (SPEC §1.6), in the fixed order of analog_gemm.h.
            analog_gemm(transposed, na, Lo, Li, xq.data(), Li, A, ld_w, yb.data(), Lo);
            // Output noise, ADC, saturation check, then accept or redo (SPEC §1.6-1.9).
            for (int k = 0; k < na; ++k) {
              const int a = act[k];
              const int n = rows[a];
              float *y = yb.data() + (int64_t)k * Lo;
              const uint64_t base = noise_base(n, (int)n_blocks, bl.id);
              const float *z = nullptr;
              if (out_noise > 0.0f) {
                fill_normal(tmp.data(), Lo, rng, TAG_OUT_NOISE, it, base);
                z = tmp.data();
              }
              int cnt;
              if (fused)
                cnt = IO_CALL(noise_sat_adc, (y, Lo, out_noise, z, use_bm, out_bound, s[n] * r[n], out_step,
                                              out_bound, Y + (int64_t)n * out + bl.o0));
              else
                cnt = IO_CALL(noise_sat, (y, Lo, out_noise, z, use_bm, out_bound));
              if (cnt > 0 && retry(a, it)) continue;
              if (!fused) finish_row(a, it, y, tmp.data());
            }
          }
        });
      }
      next_rows.clear();
      for (int a = 0; a < Na; ++a)
        if (redo[a]) next_rows.push_back(rows[a]);
      rows.swap(next_rows);
    }
  }

  if (io.out_scale != 1.0f || alpha != nullptr)
    parallel_for_dynamic(N, 16, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) apply_alpha_scale(Y + n * out, 0, out, io.out_scale);
    });
}

void add_bias(float *Y, int64_t rows, int64_t M, const float *bias) {
  parallel_for(rows, grain_for(rows, 64, rows * M), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float *y = Y + r * M;
      for (int64_t o = 0; o < M; ++o) y[o] += bias[o];
    }
  });
}

}  // namespace rpu
