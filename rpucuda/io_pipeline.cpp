#include "io_pipeline.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "blas.h"
#include "io_math.h"
#include "rng.h"
#include "threading.h"

namespace rpu {
namespace {

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

constexpr int kLocalBits = 20;  // tile sizes are below 2^20, see validate()

}  // namespace

void io_mvm(const float *W, int M, int K, bool transposed, const float *X, int N, float *Y,
            const IOParameters &io, const MappingParameter &map, bool bound_management,
            const float *alpha, int n_alpha, const MVMCall &rng) {
  const int out = transposed ? K : M;
  const int in = transposed ? M : K;
  if (N <= 0 || out <= 0) return;
  const int ld_w = K;

  auto apply_alpha_scale = [&](float *y_row, int o0, int o1, float f) {
    for (int o = o0; o < o1; ++o) {
      float a = alpha == nullptr ? 1.0f : (n_alpha == 1 ? alpha[0] : alpha[o]);
      y_row[o] *= f * a;
    }
  };

  if (io.is_perfect) {
    // Y = X A^T : A = W -> X W^T ; A = W^T -> X W
    sgemm_parallel(false, !transposed, N, out, in, 1.0f, X, in, W, ld_w, 0.0f, Y, out);
    if (io.out_scale != 1.0f || alpha != nullptr)
      parallel_for(N, 16, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) apply_alpha_scale(Y + n * out, 0, out, io.out_scale);
      });
    return;
  }


  // Weight read noise: one noisy copy of W per call (SPEC §1.5).
  static thread_local std::vector<float> tl_w_noisy;
  std::vector<float> &w_noisy = tl_w_noisy;
  const float *Wu = W;
  if (io.w_noise > 0.0f && io.w_noise_type != WeightNoiseType::None) {
    w_noisy.resize((size_t)M * K);
    const int64_t total = (int64_t)M * K;
    const bool pcm = io.w_noise_type == WeightNoiseType::PCMRead;
    parallel_for((total + 3) / 4, 1024, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) {
        float z[4];
        normal4(rng_block(rng.seed, TAG_W_NOISE, 0, rng.call, (uint64_t)q), z);
        for (int t = 0; t < 4; ++t) {
          int64_t idx = q * 4 + t;
          if (idx >= total) break;
          float w = W[idx];
          float sd = pcm ? io.w_noise * sqrtf(fabsf(w)) : io.w_noise;
          w_noisy[idx] = w + sd * z[t];
        }
      }
    });
    Wu = w_noisy.data();
  }

  // The tile grid (physical tiles: rows of W by max_output_size, columns by max_input_size).
  const int tile_rows = std::max(1, map.max_output_size), tile_cols = std::max(1, map.max_input_size);
  const int in_chunk = transposed ? tile_rows : tile_cols;
  const int out_chunk = transposed ? tile_cols : tile_rows;
  std::vector<Block> blocks;
  const int n_in_chunks = (in + in_chunk - 1) / in_chunk;
  const int n_out_chunks = (out + out_chunk - 1) / out_chunk;
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
  float r_limit = io.max_bm_factor;
  const float inp_frac = res_fraction(io.inp_res);
  if (inp_frac > 0.0f) r_limit = std::min(r_limit, io.max_bm_res / inp_frac);

  // Per-row state shared by the workers (each row is written by one worker only).
  static thread_local std::vector<float> tl_s, tl_r;
  static thread_local std::vector<int> tl_rows, tl_next;
  static thread_local std::vector<char> tl_redo;
  std::vector<float> &s = tl_s, &r = tl_r;
  std::vector<int> &rows = tl_rows, &next_rows = tl_next;
  std::vector<char> &redo = tl_redo;
  s.resize(N);
  r.resize(N);

  auto noise_scale = [&](const float *x, int Li, float *amax_out) {
    float amax = 0.0f, mx = -INFINITY;
    int nan = 0;
    for (int i = 0; i < Li; ++i) {  // (vectorizes: plain max plus a NaN flag)
      float ax = fabsf(x[i]);
      amax = ax > amax ? ax : amax;
      mx = x[i] > mx ? x[i] : mx;
      nan |= (x[i] != x[i]);
    }
    if (nan) amax = NAN;  // a NaN input makes the scale NaN
    float sn;
    switch (io.noise_management) {
      case NoiseManagementType::None: sn = 1.0f; break;
      case NoiseManagementType::Max: sn = mx > 0.0f ? mx : amax; break;
      case NoiseManagementType::Constant: sn = io.nm_thres > 0.0f ? io.nm_thres : 1.0f; break;
      case NoiseManagementType::AverageAbsMax:
      case NoiseManagementType::AbsMax:
      default:
        sn = amax;
        if (io.nm_thres > 0.0f && sn > io.nm_thres) sn = io.nm_thres;
    }
    *amax_out = amax;
    // A row of zeros gives zero output whatever the scale; a row with NaN gives NaN.
    return amax == 0.0f ? 0.0f : (amax != amax ? amax : sn);
  };

  constexpr int kSubRows = 128;  // rows multiplied at once by one worker (cache-sized)
  // Loop constants as locals: the output buffers are float*, so without this the compiler must
  // assume they alias the parameter struct and cannot vectorize the element loops.
  const float inp_bound = io.inp_bound, out_bound = io.out_bound;
  const float inp_noise = io.inp_noise, out_noise = io.out_noise;
  const bool inp_sto = io.inp_sto_round && inp_step > 0.0f, out_sto = io.out_sto_round && out_step > 0.0f;

  for (const Block &bl : blocks) {
    const int Li = bl.i1 - bl.i0, Lo = bl.o1 - bl.o0;
    const float *A = transposed ? Wu + (int64_t)bl.i0 * ld_w + bl.o0 : Wu + (int64_t)bl.o0 * ld_w + bl.i0;
    const bool average_nm = io.noise_management == NoiseManagementType::AverageAbsMax;
    if (average_nm) {
      // The batch-wide scale needs every row first.
      std::vector<float> amax_row(N);
      parallel_for(N, 16, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) s[n] = noise_scale(X + n * in + bl.i0, Li, &amax_row[n]);
      });
      double avg = 0.0;
      for (int n = 0; n < N; ++n) avg += amax_row[n];
      float sa = (float)(avg / N);
      if (io.nm_thres > 0.0f && sa > io.nm_thres) sa = io.nm_thres;
      for (int n = 0; n < N; ++n) s[n] = (s[n] == 0.0f || s[n] != s[n]) ? s[n] : sa;
    }
    rows.resize(N);
    for (int n = 0; n < N; ++n) {
      rows[n] = n;
      r[n] = 1.0f;
    }

    for (int it = 0; !rows.empty(); ++it) {
      const int Na = (int)rows.size();
      redo.assign(Na, 0);
      // Each worker takes a slice of the rows through the whole pipeline: noise management,
      // DAC, its own single-threaded product, output noise, ADC, bound-management decision.
      parallel_for(Na, 4, [&](int64_t b, int64_t e) {
        static thread_local std::vector<float> xq, yb, tmp;
        static thread_local std::vector<int> act;
        for (int64_t c0 = b; c0 < e; c0 += kSubRows) {
          const int64_t c1 = std::min<int64_t>(e, c0 + kSubRows);
          act.clear();
          xq.resize((size_t)(c1 - c0) * Li);
          yb.resize((size_t)(c1 - c0) * Lo);
          tmp.resize(std::max(Li, Lo));
          // Noise management and DAC (SPEC §1.2-1.4), row by row while the row is in cache.
          for (int64_t a = c0; a < c1; ++a) {
            const int n = rows[a];
            if (it == 0 && !average_nm) {
              float amax;
              s[n] = noise_scale(X + (int64_t)n * in + bl.i0, Li, &amax);
            }
            if (s[n] == 0.0f) {  // zero row: zero output (NaN rows go on: their output is NaN)
              if (!accumulate) std::memset(Y + (int64_t)n * out + bl.o0, 0, sizeof(float) * Lo);
              continue;
            }
            const int k = (int)act.size();
            act.push_back((int)a);
            const float *__restrict x = X + (int64_t)n * in + bl.i0;
            float *__restrict q = xq.data() + (int64_t)k * Li;
            const float f = 1.0f / (s[n] * r[n]);
            const uint64_t base = ((uint64_t)n * n_blocks + bl.id) << kLocalBits;
            if (inp_sto) {
              fill_uniform(tmp.data(), Li, rng, TAG_INP_STO_ROUND, it, base);
              for (int i = 0; i < Li; ++i) q[i] = quantize_clip(x[i] * f, inp_step, inp_bound, true, tmp[i]);
            } else {
              for (int i = 0; i < Li; ++i) q[i] = quantize_clip(x[i] * f, inp_step, inp_bound, false, 0.0f);
            }
            if (inp_noise > 0.0f) {
              fill_normal(tmp.data(), Li, rng, TAG_INP_NOISE, it, base);
              for (int i = 0; i < Li; ++i) q[i] += inp_noise * tmp[i];
            }
          }
          const int na = (int)act.size();
          if (na == 0) continue;
          // Analog product of this tile (SPEC §1.6).
          sgemm(false, !transposed, na, Lo, Li, 1.0f, xq.data(), Li, A, ld_w, 0.0f, yb.data(), Lo);
          // Output noise, ADC, saturation check, then accept or redo (SPEC §1.6-1.9).
          for (int k = 0; k < na; ++k) {
            const int a = act[k];
            const int n = rows[a];
            float *__restrict y = yb.data() + (int64_t)k * Lo;
            const uint64_t base = ((uint64_t)n * n_blocks + bl.id) << kLocalBits;
            if (out_noise > 0.0f) {
              fill_normal(tmp.data(), Lo, rng, TAG_OUT_NOISE, it, base);
              for (int o = 0; o < Lo; ++o) y[o] += out_noise * tmp[o];
            }
            bool sat = false;
            if (use_bm) {
              int cnt = 0;
              for (int o = 0; o < Lo; ++o) cnt += fabsf(y[o]) >= out_bound;
              sat = cnt > 0;
            }
            if (sat) {
              float r_next = 2.0f * r[n];
              if (io.bound_management == BoundManagementType::IterativeWorstCase && it == 0) {
                // Worst case: the input L1 norm times the largest |A| entry of this tile.
                const float *x = X + (int64_t)n * in + bl.i0;
                double l1 = 0.0;
                for (int i = 0; i < Li; ++i) l1 += fabsf(x[i]) / (s[n] * r[n]);
                float wmax = 0.0f;
                for (int o = bl.o0; o < bl.o1; ++o)
                  for (int i = bl.i0; i < bl.i1; ++i) {
                    float w = transposed ? Wu[(int64_t)i * ld_w + o] : Wu[(int64_t)o * ld_w + i];
                    wmax = fmaxf(wmax, fabsf(w));
                  }
                float rw = (float)(l1 * wmax / out_bound) * r[n];
                r_next = fmaxf(r_next, std::exp2(std::ceil(std::log2(fmaxf(rw, 1.0f)))));
                r_next = fminf(r_next, r_limit);
              }
              if (r_next <= r_limit && r_next > r[n]) {
                r[n] = r_next;
                redo[a] = 1;
                continue;
              }
            }
            float *__restrict yo = Y + (int64_t)n * out + bl.o0;
            const float f = s[n] * r[n];
            if (out_sto) {
              fill_uniform(tmp.data(), Lo, rng, TAG_OUT_STO_ROUND, it, base);
              if (accumulate)
                for (int o = 0; o < Lo; ++o) yo[o] += f * quantize_clip(y[o], out_step, out_bound, true, tmp[o]);
              else
                for (int o = 0; o < Lo; ++o) yo[o] = f * quantize_clip(y[o], out_step, out_bound, true, tmp[o]);
            } else if (accumulate) {
              for (int o = 0; o < Lo; ++o) yo[o] += f * quantize_clip(y[o], out_step, out_bound, false, 0.0f);
            } else {
              for (int o = 0; o < Lo; ++o) yo[o] = f * quantize_clip(y[o], out_step, out_bound, false, 0.0f);
            }
          }
        }
      });
      next_rows.clear();
      for (int a = 0; a < Na; ++a)
        if (redo[a]) next_rows.push_back(rows[a]);
      rows.swap(next_rows);
    }
  }

  if (io.out_scale != 1.0f || alpha != nullptr)
    parallel_for(N, 16, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) apply_alpha_scale(Y + n * out, 0, out, io.out_scale);
    });
}

}  // namespace rpu
