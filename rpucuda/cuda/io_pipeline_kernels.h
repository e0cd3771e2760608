// The IO pipeline's CUDA twin (rpucuda/cuda/io_pipeline.cu) as grid kernels (twin_grid.h) and
// the host-side driver that sequences them; the same code is played on the host by
// tests/cpp/test_cuda_emulation.cpp against rpu::io_mvm (rpucuda/io_pipeline.cpp), so every
// index, random-number counter and bound-management decision below must be the CPU's:
//
//  * tiles: blocks b = oc * n_ic + ic (output chunk outer), chunks of max_output_size rows of W
//    by max_input_size columns (swapped roles when transposed);
//  * random numbers of (row n, block b): counter base ((n * n_blocks + b) << 20) + local
//    element index, sub = bound-management iteration; weight read noise: normal number i for
//    weight i (TAG_W_NOISE, sub 0);
//  * partial sums along the input are added in the order of the input chunks, from +0.
//
// Work plan of one call (rows in slabs that bound the scratch memory):
//   [weight read noise] [tile max|A| for worst-case BM] [AverageAbsMax scales]
//   per slab:  prepare (noise management + DAC per row and input chunk)
//              -> one GEMM per input chunk (or per tile when the DAC has per-tile noise)
//              -> output (noise, ADC, saturation, bound-management decision per row and tile)
//              -> while rows saturate: copy the per-tile counts to the host (the one device ->
//                 host copy of an iteration), redo only those (row, tile) pairs
//              -> sum of the input chunks in order, out_scale and alpha.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "io_math.h"
#include "io_pipeline.h"
#include "parameters.h"
#include "rng.h"
#include "twin_grid.h"

namespace rpu {
namespace twin {

// Bits of the element index inside a (row, tile) random stream; the CPU's kLocalBits
// (io_pipeline.cpp).  Tile sizes are below 2^20 (validate(MappingParameter)).
constexpr int kIOLocalBits = 20;
// Scratch memory of one slab of rows (products of every input chunk, quantized inputs).
constexpr size_t kIOSlabBytes = size_t(256) << 20;

// The tile grid of one call.
struct IOGeom {
  int M, K, N, in, out;
  bool transposed;
  int in_chunk, out_chunk, n_ic, n_oc, n_blocks;
  RPU_HD int ic(int b) const { return b % n_ic; }
  RPU_HD int oc(int b) const { return b / n_ic; }
  RPU_HD int i0(int b) const { return ic(b) * in_chunk; }
  RPU_HD int o0(int b) const { return oc(b) * out_chunk; }
  RPU_HD int li(int b) const { return imin(in - i0(b), in_chunk); }
  RPU_HD int lo(int b) const { return imin(out - o0(b), out_chunk); }
  // Start of the tile of block b in W (the analog_gemm.h convention: A[o][i] = W[o*K + i], or
  // W[i*K + o] when transposed).
  RPU_HD const float *tile(const float *W, int b) const {
    return transposed ? W + (int64_t)i0(b) * K + o0(b) : W + (int64_t)o0(b) * K + i0(b);
  }
};

inline IOGeom make_io_geom(int M, int K, int N, bool transposed, const MappingParameter &map) {
  IOGeom g;
  g.M = M;
  g.K = K;
  g.N = N;
  g.transposed = transposed;
  g.out = transposed ? K : M;
  g.in = transposed ? M : K;
  const int tile_rows = std::max(1, map.max_output_size), tile_cols = std::max(1, map.max_input_size);
  g.in_chunk = transposed ? tile_rows : tile_cols;
  g.out_chunk = transposed ? tile_cols : tile_rows;
  g.n_ic = (g.in + g.in_chunk - 1) / g.in_chunk;
  g.n_oc = (g.out + g.out_chunk - 1) / g.out_chunk;
  g.n_blocks = g.n_ic * g.n_oc;
  return g;
}

// The periphery constants of one call.
struct IOConst {
  float inp_step, inp_bound, inp_noise;
  bool inp_sto;
  float out_step, out_bound, out_noise;
  bool out_sto;
  NoiseManagementType nm;
  float nm_thres;
  bool use_bm, worst_case;
  float r_limit;
  uint64_t seed, call;
};

inline IOConst make_io_const(const IOParameters &io, bool bound_management, const MVMCall &rng) {
  IOConst c;
  c.inp_step = quant_step(io.inp_res, io.inp_bound);
  c.inp_bound = io.inp_bound;
  c.inp_noise = io.inp_noise;
  c.inp_sto = io.inp_sto_round && c.inp_step > 0.0f;
  c.out_step = quant_step(io.out_res, io.out_bound);
  c.out_bound = io.out_bound;
  c.out_noise = io.out_noise;
  c.out_sto = io.out_sto_round && c.out_step > 0.0f;
  c.nm = io.noise_management;
  c.nm_thres = io.nm_thres;
  c.use_bm = bound_management && io.bound_management != BoundManagementType::None && io.out_bound > 0.0f;
  c.worst_case = c.use_bm && io.bound_management == BoundManagementType::IterativeWorstCase;
  c.r_limit = io.max_bm_factor;
  const float res = io.inp_res;
  const float inp_frac = res <= 0.0f ? 0.0f : (res > 1.0f ? 1.0f / res : res);
  if (inp_frac > 0.0f) c.r_limit = std::min(c.r_limit, io.max_bm_res / inp_frac);
  c.seed = rng.seed;
  c.call = rng.call;
  return c;
}

RPU_HD uint64_t io_rng_base(int64_t n, int b, int n_blocks) {
  return ((uint64_t)n * (uint64_t)n_blocks + (uint64_t)b) << kIOLocalBits;
}

// ---- element math (SPEC §1.2-1.8) -------------------------------------------------------------------

// The noise-management scan of elements t, t+T, ... of x[0, L).
RPU_HD RedScan io_scan_partial(const float *x, int L, int t, int T) {
  RedScan r;
  r.amax = 0.0f;
  r.mx = -INFINITY;
  r.nan = 0;
  for (int i = t; i < L; i += T) {
    const float v = x[i];
    const float av = fabsf(v);
    r.amax = av > r.amax ? av : r.amax;
    r.mx = v > r.mx ? v : r.mx;
    r.nan |= (v != v);
  }
  return r;
}

// Noise-management scale of a row (0 for a zero row, NaN for a row with a NaN); *amax_out: the
// row's max|x| (NaN with a NaN), which AverageAbsMax averages.
RPU_HD float io_noise_scale(const RedScan &r, NoiseManagementType nm, float nm_thres, float *amax_out) {
  const float amax = r.nan ? NAN : r.amax;
  *amax_out = amax;
  return noise_scale_of(nm, amax, r.mx, nm_thres);
}

// DAC of elements 4j .. 4j+3 (< L) of a row slice: q = quantize_clip(x * f) (+ inp_noise * xi).
RPU_HD void io_dac_quad(const float *x, float *q, int L, int j, float f, const IOConst &c, uint64_t base,
                        uint32_t it) {
  const int e0 = 4 * j, ne = imin(4, L - e0);
  float z[4] = {0.0f, 0.0f, 0.0f, 0.0f}, u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (c.inp_noise > 0.0f) normal4(rng_block(c.seed, TAG_INP_NOISE, it, c.call, (base >> 2) + (uint64_t)j), z);
  if (c.inp_sto) {
    const Philox4 pb = rng_block(c.seed, TAG_INP_STO_ROUND, it, c.call, (base >> 2) + (uint64_t)j);
    for (int e = 0; e < 4; ++e) u[e] = u01(pb.v[e]);
  }
  for (int e = 0; e < ne; ++e) {
    float v = quantize_clip(x[e0 + e] * f, c.inp_step, c.inp_bound, c.inp_sto, u[e]);
    if (c.inp_noise > 0.0f) v += c.inp_noise * z[e];
    q[e0 + e] = v;
  }
}

// Output noise, saturation check and ADC of elements 4j .. 4j+3 (< L) of a row's tile output:
// yo = f * quantize_clip(y + out_noise * xi).  Returns whether one saturated (bound management
// only).  y and yo may be the same array.
RPU_HD int io_adc_quad(const float *y, float *yo, int L, int j, float f, const IOConst &c, uint64_t base,
                       uint32_t it) {
  const int e0 = 4 * j, ne = imin(4, L - e0);
  float z[4] = {0.0f, 0.0f, 0.0f, 0.0f}, u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (c.out_noise > 0.0f) normal4(rng_block(c.seed, TAG_OUT_NOISE, it, c.call, (base >> 2) + (uint64_t)j), z);
  if (c.out_sto) {
    const Philox4 pb = rng_block(c.seed, TAG_OUT_STO_ROUND, it, c.call, (base >> 2) + (uint64_t)j);
    for (int e = 0; e < 4; ++e) u[e] = u01(pb.v[e]);
  }
  int sat = 0;
  for (int e = 0; e < ne; ++e) {
    float v = y[e0 + e];
    if (c.out_noise > 0.0f) v = v + c.out_noise * z[e];
    if (c.use_bm) sat |= fabsf(v) >= c.out_bound;
    yo[e0 + e] = f * quantize_clip(v, c.out_step, c.out_bound, c.out_sto, u[e]);
  }
  return sat;
}

// Bound management (SPEC §1.8) of a (row, tile) whose output saturated in iteration `it`:
// true (and r updated) when it is redone with the larger factor.  x: the row's input slice of
// the tile (Li values), wmax: the tile's max|A| (worst case only).
RPU_HD bool io_bm_retry(float s, float &r, uint32_t it, const float *x, int Li, float wmax, const IOConst &c) {
  float r_next = 2.0f * r;
  if (c.worst_case && it == 0) {
    // Worst case: the input L1 norm times the largest |A| entry of this tile (serial double sum,
    // the CPU's order).
    double l1 = 0.0;
    for (int i = 0; i < Li; ++i) l1 += fabsf(x[i]) / (s * r);
    const float rw = (float)(l1 * wmax / c.out_bound) * r;
    // 2^ceil(log2(.)) as on the CPU (exp2 of an integer is exact: ldexpf; inf beyond 2^127).
    const float e = ceilf(log2f(fmaxf(rw, 1.0f)));
    r_next = fmaxf(r_next, e > 127.0f ? INFINITY : ldexpf(1.0f, (int)e));
    r_next = fminf(r_next, c.r_limit);
  }
  if (r_next <= c.r_limit && r_next > r) {
    r = r_next;
    return true;
  }
  return false;
}

// ---- kernels ------------------------------------------------------------------------------------------

// Weight read noise (SPEC §1.5): Wu = W + w_noise (* sqrt|W| for PCM read) * xi_i.
struct WeightNoiseKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "io_mvm: weight noise";
  const float *W;
  float *Wu;
  int64_t total;
  float w_noise;
  bool pcm;
  uint64_t seed, call;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    const int64_t nq = (total + 3) / 4;
    for (int64_t j = blk * T + t; j < nq; j += nblk * T) {
      float z[4];
      normal4(rng_block(seed, TAG_W_NOISE, 0, call, (uint64_t)j), z);
      for (int e = 0; e < 4 && 4 * j + e < total; ++e) {
        const int64_t i = 4 * j + e;
        const float w = W[i];
        Wu[i] = pcm ? w + (w_noise * sqrtf(fabsf(w))) * z[e] : w + w_noise * z[e];
      }
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// max|A| of each tile (worst-case bound management); block b -> wmax[b].
struct TileWmaxKernel {
  using Red = RedMax;
  static constexpr bool kReduce = true;
  static constexpr const char *kName = "io_mvm: tile max|W|";
  IOGeom g;
  const float *Wu;
  float *wmax;
  RPU_HD Red partial(int64_t blk, int64_t, int t, int T) const {
    const int b = (int)blk, Li = g.li(b), Lo = g.lo(b);
    const float *A = g.tile(Wu, b);
    float m = 0.0f;
    for (int64_t e = t; e < (int64_t)Lo * Li; e += T) {
      const int o = (int)(e / Li), i = (int)(e % Li);
      const float w = g.transposed ? A[(int64_t)i * g.K + o] : A[(int64_t)o * g.K + i];
      m = fmaxf(m, fabsf(w));
    }
    Red r;
    r.v = m;
    return r;
  }
  RPU_HD void finish(int64_t blk, int64_t, int t, int, const Red &all) const {
    if (t == 0) wmax[blk] = all.v;
  }
};

// Noise-management scales of all rows (AverageAbsMax needs them before any row is processed):
// block (ic, n) -> s[ic*N + n], amax[ic*N + n].
struct ScaleKernel {
  using Red = RedScan;
  static constexpr bool kReduce = true;
  static constexpr const char *kName = "io_mvm: noise-management scan";
  IOGeom g;
  const float *X;
  NoiseManagementType nm;
  float nm_thres;
  float *s_all, *amax_all;
  RPU_HD Red partial(int64_t blk, int64_t, int t, int T) const {
    const int n = (int)(blk % g.N), ic = (int)(blk / g.N);
    const int i0 = ic * g.in_chunk, Li = imin(g.in - i0, g.in_chunk);
    return io_scan_partial(X + (int64_t)n * g.in + i0, Li, t, T);
  }
  RPU_HD void finish(int64_t blk, int64_t, int t, int, const Red &all) const {
    if (t != 0) return;
    float amax;
    s_all[blk] = io_noise_scale(all, nm, nm_thres, &amax);
    amax_all[blk] = amax;
  }
};

// AverageAbsMax: the batch mean of max|x| per input chunk (serial double sum over the rows in
// order, as on the CPU), clipped at nm_thres.  Block ic, thread 0.
struct AverageKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "io_mvm: average abs-max";
  int N;
  const float *amax_all;
  float nm_thres;
  float *sa;
  RPU_HD Red partial(int64_t blk, int64_t, int t, int) const {
    if (t == 0) {
      double avg = 0.0;
      const float *a = amax_all + blk * N;
      for (int n = 0; n < N; ++n) avg += a[n];
      float v = (float)(avg / N);
      if (nm_thres > 0.0f && v > nm_thres) v = nm_thres;
      sa[blk] = v;
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// AverageAbsMax: every non-zero, non-NaN row of chunk ic gets the chunk's mean scale.
struct AverageApplyKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "io_mvm: average scale";
  int N, n_ic;
  const float *sa;
  float *s_all;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t e = blk * T + t; e < (int64_t)N * n_ic; e += nblk * T) {
      const float s = s_all[e];
      s_all[e] = (s == 0.0f || s != s) ? s : sa[e / N];
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// First iteration, block (ic, local row n): noise management (unless precomputed) and the DAC of
// the row's input chunk ic into Xq[g][n][i0 + i] for each tile group g (one group when the DAC
// has no per-tile noise: then its result is the same for every output chunk).
struct PrepareKernel {
  using Red = RedScan;
  static constexpr bool kReduce = true;
  static constexpr const char *kName = "io_mvm: noise management and DAC";
  IOGeom g;
  IOConst c;
  const float *X;
  int n0, Nb, Ns;   // slab: global rows n0 .. n0+Nb-1; Ns rows of scratch per group
  bool precomputed;  // s_all already holds the scales (AverageAbsMax)
  float *s_all;      // [n_ic][N]
  float *Xq;         // [n_dep][Ns][in]
  int n_dep;
  RPU_HD const float *row(int64_t blk, int &n, int &ic) const {
    n = (int)(blk % Nb);
    ic = (int)(blk / Nb);
    return X + (int64_t)(n0 + n) * g.in + (int64_t)ic * g.in_chunk;
  }
  RPU_HD Red partial(int64_t blk, int64_t, int t, int T) const {
    int n, ic;
    const float *x = row(blk, n, ic);
    if (precomputed) return RedScan{0.0f, 0.0f, 0};
    return io_scan_partial(x, imin(g.in - ic * g.in_chunk, g.in_chunk), t, T);
  }
  RPU_HD void finish(int64_t blk, int64_t, int t, int T, const Red &all) const {
    int n, ic;
    const float *x = row(blk, n, ic);
    const int Li = imin(g.in - ic * g.in_chunk, g.in_chunk);
    float *s_slot = s_all + (int64_t)ic * g.N + n0 + n;
    float s;
    if (precomputed) {
      s = *s_slot;
    } else {
      float amax;
      s = io_noise_scale(all, c.nm, c.nm_thres, &amax);
      if (t == 0) *s_slot = s;
    }
    const float f = s == 0.0f ? 0.0f : 1.0f / (s * 1.0f);
    const int nq = (Li + 3) / 4;
    for (int grp = 0; grp < n_dep; ++grp) {
      float *q = Xq + ((int64_t)grp * Ns + n) * g.in + (int64_t)ic * g.in_chunk;
      if (s == 0.0f) {
        for (int i = t; i < Li; i += T) q[i] = 0.0f;
        continue;
      }
      const uint64_t base = io_rng_base(n0 + n, grp * g.n_ic + ic, g.n_blocks);
      for (int j = t; j < nq; j += T) io_dac_quad(x, q, Li, j, f, c, base, 0);
    }
  }
};

// Output stage of an iteration for one (row, tile): output noise, ADC, saturation check and the
// bound-management decision.  The result f * ADC(.) goes to Yp[ic][n][o] (the tile's share of
// the output; a row that is redone is overwritten by its next iteration).  Iteration 0: block
// (b, n) over all rows, reading the product in place from Yp.  Later iterations (list mode):
// block (b, k) for the k-th redone row of tile b, reading its product from Yr.  A redone row is
// appended to list_next/cnt_next with its new factor in r_arr.
struct OutputKernel {
  using Red = RedFlag;
  static constexpr bool kReduce = true;
  static constexpr const char *kName = "io_mvm: output noise, ADC and bound management";
  IOGeom g;
  IOConst c;
  const float *X;
  int n0, Nb, Ns;
  const float *s_all;
  float *r_arr;  // [n_blocks][Ns]
  const float *wmax;
  uint32_t it;
  bool list_mode;
  const int *list_cur, *cnt_cur, *off;  // list mode: rows of tile b, their count, first row in Yr
  int kmax;
  const float *Yr;  // list mode: [sum of counts][out_chunk]
  float *Yp;
  int64_t yp_ic_stride;
  int *list_next, *cnt_next;  // [n_blocks][Ns], [n_blocks]

  struct Row {
    bool active;
    int b, n, k;
    float s, r;
    const float *y;
    float *yo;
  };
  RPU_HD Row row(int64_t blk) const {
    Row w;
    if (!list_mode) {
      w.b = (int)(blk / Nb);
      w.n = (int)(blk % Nb);
      w.k = 0;
    } else {
      w.b = (int)(blk / kmax);
      w.k = (int)(blk % kmax);
      w.active = w.k < cnt_cur[w.b];
      if (!w.active) return w;
      w.n = list_cur[(int64_t)w.b * Ns + w.k];
    }
    w.active = true;
    const int ic = g.ic(w.b);
    w.s = s_all[(int64_t)ic * g.N + n0 + w.n];
    w.r = list_mode ? r_arr[(int64_t)w.b * Ns + w.n] : 1.0f;
    w.yo = Yp + ic * yp_ic_stride + (int64_t)w.n * g.out + g.o0(w.b);
    w.y = list_mode ? Yr + (int64_t)(off[w.b] + w.k) * g.out_chunk : w.yo;
    return w;
  }
  RPU_HD Red partial(int64_t blk, int64_t, int t, int T) const {
    Red red;
    red.v = 0;
    const Row w = row(blk);
    if (!w.active) return red;
    const int Lo = g.lo(w.b);
    if (w.s == 0.0f) {  // a zero row: zero output, never saturates
      for (int o = t; o < Lo; o += T) w.yo[o] = 0.0f;
      return red;
    }
    const uint64_t base = io_rng_base(n0 + w.n, w.b, g.n_blocks);
    const float f = w.s * w.r;
    for (int j = t; j < (Lo + 3) / 4; j += T) red.v |= io_adc_quad(w.y, w.yo, Lo, j, f, c, base, it);
    return red;
  }
  RPU_HD void finish(int64_t blk, int64_t, int t, int, const Red &all) const {
    if (t != 0 || !all.v) return;
    const Row w = row(blk);
    if (!w.active) return;
    float r = w.r;
    const float *x = X + (int64_t)(n0 + w.n) * g.in + g.i0(w.b);
    if (io_bm_retry(w.s, r, it, x, g.li(w.b), c.worst_case ? wmax[w.b] : 0.0f, c)) {
      r_arr[(int64_t)w.b * Ns + w.n] = r;
      const int pos = atomic_inc(cnt_next + w.b);
      list_next[(int64_t)w.b * Ns + pos] = w.n;
    }
  }
};

// Later iterations: the DAC of the k-th redone row of tile b (its factor r) into Xr.
struct RedoDacKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "io_mvm: bound-management DAC";
  IOGeom g;
  IOConst c;
  const float *X;
  int n0, Ns;
  const float *s_all, *r_arr;
  const int *list, *cnt, *off;
  int kmax;
  uint32_t it;
  float *Xr;  // [sum of counts][in_chunk]
  RPU_HD Red partial(int64_t blk, int64_t, int t, int T) const {
    const int b = (int)(blk / kmax), k = (int)(blk % kmax);
    if (k < cnt[b]) {
      const int n = list[(int64_t)b * Ns + k], Li = g.li(b);
      const float s = s_all[(int64_t)g.ic(b) * g.N + n0 + n];
      const float r = r_arr[(int64_t)b * Ns + n];
      const float f = 1.0f / (s * r);
      const float *x = X + (int64_t)(n0 + n) * g.in + g.i0(b);
      float *q = Xr + (int64_t)(off[b] + k) * g.in_chunk;
      const uint64_t base = io_rng_base(n0 + n, b, g.n_blocks);
      for (int j = t; j < (Li + 3) / 4; j += T) io_dac_quad(x, q, Li, j, f, c, base, it);
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// The output of a slab: the tiles' shares summed over the input chunks in order (from +0, as the
// CPU accumulates), then out_scale * alpha (SPEC §1.9).  With one input chunk Yp may be Y.
struct FinalKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "io_mvm: partial sums and alpha";
  int Nb, out, n_ic;
  const float *Yp;
  int64_t yp_ic_stride;
  float *Y;
  bool scale;
  float out_scale;
  const float *alpha;
  int n_alpha;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t e = blk * T + t; e < (int64_t)Nb * out; e += nblk * T) {
      float acc;
      if (n_ic == 1) {
        acc = Yp[e];
      } else {
        acc = 0.0f;
        for (int ic = 0; ic < n_ic; ++ic) acc += Yp[ic * yp_ic_stride + e];
      }
      if (scale) {
        const int o = (int)(e % out);
        const float a = alpha == nullptr ? 1.0f : (n_alpha == 1 ? alpha[0] : alpha[o]);
        acc *= out_scale * a;
      }
      Y[e] = acc;
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// ---- driver ------------------------------------------------------------------------------------------

// The twin of rpu::io_mvm on an Exec (twin_grid.h).  W, X, Y, alpha are the Exec's memory.
template <class Exec>
void io_mvm_run(Exec &ex, const float *W, int M, int K, bool transposed, const float *X, int N, float *Y,
                const IOParameters &io, const MappingParameter &map, bool bound_management, const float *alpha,
                int n_alpha, const MVMCall &rng, size_t slab_bytes = kIOSlabBytes) {
  const IOGeom g = make_io_geom(M, K, N, transposed, map);
  if (N <= 0 || g.out <= 0) return;
  const bool scale = io.out_scale != 1.0f || alpha != nullptr;
  if (g.in <= 0) {  // an empty product
    ex.memset0(Y, sizeof(float) * (size_t)N * g.out);
    return;
  }
  auto final_kernel = [&](int Nb, const float *Yp, int64_t stride, float *Yd, int n_ic) {
    FinalKernel fk{Nb, g.out, n_ic, Yp, stride, Yd, scale, io.out_scale, alpha, n_alpha};
    ex.launch(fk, grid_for((int64_t)Nb * g.out, kMaxThreads), kMaxThreads);
  };

  if (io.is_perfect) {
    ex.gemm(transposed, N, g.out, g.in, X, g.in, W, K, Y, g.out);
    if (scale) final_kernel(N, Y, 0, Y, 1);
    return;
  }

  // Weight read noise: one noisy copy of W per call.
  const bool w_noise = io.w_noise > 0.0f && io.w_noise_type != WeightNoiseType::None;
  typename Exec::template Buf<float> wu_buf(ex, w_noise ? (size_t)M * K : 0);
  const float *Wu = W;
  if (w_noise) {
    const int64_t total = (int64_t)M * K;
    WeightNoiseKernel k{W, wu_buf.get(), total, io.w_noise, io.w_noise_type == WeightNoiseType::PCMRead, rng.seed,
                        rng.call};
    ex.launch(k, grid_for((total + 3) / 4, kMaxThreads), kMaxThreads);
    Wu = wu_buf.get();
  }

  const IOConst c = make_io_const(io, bound_management, rng);
  typename Exec::template Buf<float> wmax(ex, c.worst_case ? g.n_blocks : 0);
  if (c.worst_case) {
    TileWmaxKernel k{g, Wu, wmax.get()};
    ex.launch(k, g.n_blocks, kMaxThreads);
  }

  // Noise-management scales [n_ic][N]: AverageAbsMax needs the whole batch first; otherwise the
  // prepare kernel computes them.
  const bool average = io.noise_management == NoiseManagementType::AverageAbsMax;
  typename Exec::template Buf<float> s_all(ex, (size_t)g.n_ic * N);
  if (average) {
    typename Exec::template Buf<float> amax_all(ex, (size_t)g.n_ic * N), sa(ex, g.n_ic);
    ScaleKernel sk{g, X, io.noise_management, io.nm_thres, s_all.get(), amax_all.get()};
    ex.launch(sk, (int64_t)g.n_ic * N, threads_for(std::min(g.in, g.in_chunk)));
    AverageKernel ak{N, amax_all.get(), io.nm_thres, sa.get()};
    ex.launch(ak, g.n_ic, 32);
    AverageApplyKernel apk{N, g.n_ic, sa.get(), s_all.get()};
    ex.launch(apk, grid_for((int64_t)g.n_ic * N, kMaxThreads), kMaxThreads);
  }

  // Per-tile input noise or stochastic rounding makes the DAC output depend on the output chunk.
  const bool dep = c.inp_noise > 0.0f || c.inp_sto;
  const int n_dep = dep ? g.n_oc : 1;
  const bool multi = g.n_ic > 1;  // partial sums: the shares go to scratch, else straight to Y
  const int64_t row_bytes = (int64_t)sizeof(float) * ((multi ? (int64_t)g.n_ic * g.out : 0) + (int64_t)n_dep * g.in) +
                            (int64_t)sizeof(int) * 3 * g.n_blocks;
  const int Ns = (int)std::max<int64_t>(1, std::min<int64_t>(N, (int64_t)slab_bytes / row_bytes));
  const int64_t yp_stride = (int64_t)Ns * g.out;
  typename Exec::template Buf<float> xq(ex, (size_t)n_dep * Ns * g.in), yp(ex, multi ? (size_t)g.n_ic * yp_stride : 0);
  typename Exec::template Buf<float> r_arr(ex, c.use_bm ? (size_t)g.n_blocks * Ns : 0);
  typename Exec::template Buf<int> lists(ex, c.use_bm ? (size_t)2 * g.n_blocks * Ns : 0);
  typename Exec::template Buf<int> cnts(ex, c.use_bm ? (size_t)2 * g.n_blocks : 0);
  const int prep_threads = threads_for((std::min(g.in, g.in_chunk) + 3) / 4);
  const int out_threads = threads_for((std::min(g.out, g.out_chunk) + 3) / 4);
  std::vector<int> cnt_host(g.n_blocks), off_host(g.n_blocks);

  for (int n0 = 0; n0 < N; n0 += Ns) {
    const int Nb = std::min(Ns, N - n0);
    float *Yp = multi ? yp.get() : Y + (int64_t)n0 * g.out;

    PrepareKernel pk{g, c, X, n0, Nb, Ns, average, s_all.get(), xq.get(), n_dep};
    ex.launch(pk, (int64_t)g.n_ic * Nb, prep_threads);

    // Analog products of iteration 0 (SPEC §1.6).
    for (int grp = 0; grp < n_dep; ++grp)
      for (int ic = 0; ic < g.n_ic; ++ic) {
        const int b = grp * g.n_ic + ic;
        const float *xs = xq.get() + (int64_t)grp * Ns * g.in + g.i0(b);
        if (dep)
          ex.gemm(transposed, Nb, g.lo(b), g.li(b), xs, g.in, g.tile(Wu, b), K, Yp + ic * yp_stride + g.o0(b), g.out);
        else  // every output chunk at once (the values do not depend on the slicing)
          ex.gemm(transposed, Nb, g.out, g.li(b), xs, g.in, g.tile(Wu, b), K, Yp + ic * yp_stride, g.out);
      }

    int *list_cur = lists.get(), *list_next = c.use_bm ? lists.get() + (int64_t)g.n_blocks * Ns : nullptr;
    int *cnt_cur = cnts.get(), *cnt_next = c.use_bm ? cnts.get() + g.n_blocks : nullptr;
    if (c.use_bm) ex.memset0(cnt_cur, sizeof(int) * g.n_blocks);
    OutputKernel ok{g, c, X, n0, Nb, Ns, s_all.get(), r_arr.get(), wmax.get(), 0u, false, nullptr, nullptr,
                    nullptr, 1, nullptr, Yp, yp_stride, list_cur, cnt_cur};
    ex.launch(ok, (int64_t)g.n_blocks * Nb, out_threads);

    // Bound management (SPEC §1.8): redo the saturated (row, tile) pairs until none is left.
    for (uint32_t it = 1; c.use_bm; ++it) {
      ex.copy_to_host(cnt_host.data(), cnt_cur, sizeof(int) * g.n_blocks);
      int64_t total = 0;
      int kmax = 0;
      for (int b = 0; b < g.n_blocks; ++b) {
        off_host[b] = (int)total;
        total += cnt_host[b];
        kmax = std::max(kmax, cnt_host[b]);
      }
      if (total == 0) break;
      typename Exec::template Buf<int> off(ex, g.n_blocks);
      ex.copy_to_device(off.get(), off_host.data(), sizeof(int) * g.n_blocks);
      typename Exec::template Buf<float> xr(ex, (size_t)total * g.in_chunk), yr(ex, (size_t)total * g.out_chunk);
      RedoDacKernel rk{g, c, X, n0, Ns, s_all.get(), r_arr.get(), list_cur, cnt_cur, off.get(), kmax, it, xr.get()};
      ex.launch(rk, (int64_t)g.n_blocks * kmax, prep_threads);
      for (int b = 0; b < g.n_blocks; ++b)
        if (cnt_host[b] > 0)
          ex.gemm(transposed, cnt_host[b], g.lo(b), g.li(b), xr.get() + (int64_t)off_host[b] * g.in_chunk, g.in_chunk,
                  g.tile(Wu, b), K, yr.get() + (int64_t)off_host[b] * g.out_chunk, g.out_chunk);
      ex.memset0(cnt_next, sizeof(int) * g.n_blocks);
      OutputKernel rok{g, c, X, n0, Nb, Ns, s_all.get(), r_arr.get(), wmax.get(), it, true, list_cur, cnt_cur,
                       off.get(), kmax, yr.get(), Yp, yp_stride, list_next, cnt_next};
      ex.launch(rok, (int64_t)g.n_blocks * kmax, out_threads);
      std::swap(list_cur, list_next);
      std::swap(cnt_cur, cnt_next);
    }

    if (multi || scale) final_kernel(Nb, Yp, yp_stride, Y + (int64_t)n0 * g.out, g.n_ic);
  }
}

}  // namespace twin
}  // namespace rpu
