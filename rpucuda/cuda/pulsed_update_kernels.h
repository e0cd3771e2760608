// The CUDA twin of the pulsed update (rpucuda/pulsed_update.cpp), written so that it also runs on
// the host: every kernel is a "body" whose block function is a template over an executor `Ex`
// (ex.each(f) runs f(thread, state) for every thread of the block, ex.sync() is __syncthreads(),
// ex.sync_or(p) is __syncthreads_or()).  pulsed_update.cu launches the bodies as CUDA kernels with
// a device executor; tests/cpp/test_cuda_update_emulation.cpp plays the same grid on the host with
// a sequential executor and compares with rpu::pulsed_update.  The orchestration
// (run_pulsed_update) is likewise a template over a backend (allocation, launch, exact update).
//
// Data flow (all on the stream, no host round trip):
//  1. AbsMaxBody: per sample max|x|, max|d| (NaN-ignoring, as the CPU).
//  2. ScalesBody (one block): pulse_scales_hd() per sample, the batch's max BL, fixed_bl, and the
//     slot layout (BatchInfo).
//  3. TrainGenBody: the pulse trains of a chunk of samples, from the same 16-bit Philox values as
//     the CPU (TAG_PULSE_X / TAG_PULSE_D, value (n*64 + s)*Kp + i, Kp = K rounded up to 8).
//     Layout: the slots of all samples of the chunk are laid end to end, sample n (local index)
//     occupying the S slot positions n*S .. n*S+S-1 (S = 1, 2, 4, 8 for BL <= 8, else 32 or 64),
//     packed into 32-bit words; per (word, line) a TrainWord {a: the firing slots, b: the same bits
//     where the line's value is <= 0}.  ImplicitGenBody: the pulse counts round(p BL) of
//     DETERMINISTIC_IMPLICIT instead, signed with the value's sign.
//  4. ConstantStep: CountBody, a "binary GEMM" over tiles of 64 rows x 128 columns of W
//     (256 threads, 4 x 8 cross-points each), staging kWS words of both sides in shared memory:
//     per cross-point and word, with t = a_x & a_d,
//        S >= 32 (one sample per word): acc += popc(t) * (1 + 65536 [sign(x) != sign(d)])
//        S <= 8 (several samples):      acc += popc(t) + 65536 popc((a_x & b_d) ^ (b_x & a_d))
//     i.e. acc = total + 65536 * up-pulses (chunks keep both below 65536).  A small matrix splits
//     a tile's words over several blocks (atomic adds), so that the device is filled.
//     ApplyBody: the chunk's counts are added to those of the previous chunks; after the last one,
//     the CPU's batch-aggregated step (same normals, same conservative no-bound check), and a
//     cross-point that might reach a bound is flagged and done pulse by pulse (PulseBody with
//     fixup) in sample order.
//  5. Other devices: PulseBody (one cross-point per thread, tiles of 16 x 16), every coincidence
//     one device_pulse() (device_step.h), in sample order.
//
// Cost: the counting is bound by popc, one per cross-point and 32-bit word: N K M popc for BL > 8
// (estimated from 16 popc per clock and SM: about 4 ms for 4096 x 4096 x 1024 on an H100/H200;
// not measured), fewer for BL <= 8 (32/S samples per word).  Where most cross-points are within reach of a bound (large steps, dw_min_std > 0 widens
// the reach by 1 + 8 dw_min_std) the CPU's semantics require pulse-by-pulse updates, which cost
// one device_pulse() per coincidence, as on the CPU.
//
// Cycle-to-cycle noise of pulse-by-pulse updates: the CPU draws it from a per-row sequential
// stream (TAG_PULSE_C2C sub 2), which would serialize a row on the GPU; here the pulse of
// cross-point c = j*K + i in slot s of sample n (or the p-th pulse of sample n, implicit) uses the
// standard normal number c * 2^32 + n*64 + s of TAG_PULSE_C2C sub 3.  So CUDA and CPU agree
// exactly when dw_min_std = 0 and in distribution otherwise (needs M*K < 2^32, N < 2^26).
// The ConstantStep batch-aggregated path uses the CPU's numbers (sub 1, j*Kq + i) and agrees
// exactly.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "device_step.h"
#include "parameters.h"
#include "pulsed_update.h"
#include "pulsed_update_math.h"
#include "rng.h"

#if defined(__CUDACC__)
#define RPU_PU_UNROLL _Pragma("unroll")
#else
#define RPU_PU_UNROLL
#endif

namespace rpu {
namespace pu {

// ---- geometry and limits ---------------------------------------------------------------------
constexpr int kBlock = 256;          // threads per block of every body
constexpr int kTJ = 4, kTI = 8;      // cross-points per thread (rows x columns)
constexpr int kBJ = 64, kBI = 128;   // cross-points per block: 16 x 16 threads
constexpr int kWS = 16;              // words (or samples, implicit) per shared-memory stage
constexpr int kMaxBits = 64;         // pulse slots of a train (as on the CPU)
constexpr float kXiBound = 8.0f;     // |xi| bound of the ConstantStep reach check (as on the CPU)
constexpr uint32_t kC2cDense = 1;    // TAG_PULSE_C2C sub-streams: the aggregated ConstantStep normals
constexpr uint32_t kC2cPair = 3;     // ... and the per-cross-point pulse stream (CUDA only)
// Steps per chunk, so that the 16-bit halves of the packed counters cannot overflow: a word
// adds <= 32 to each half, an implicit sample <= 64.
constexpr int kMaxStepsWords = 2032;
constexpr int kMaxStepsImplicit = 1008;
constexpr size_t kMaxTrainBytes = size_t(256) << 20;  // train scratch of one chunk

// ---- small helpers -------------------------------------------------------------------------------
RPU_HD int popc32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}
RPU_HD int ctz32(uint32_t v) {  // v != 0
#if defined(__CUDA_ARCH__)
  return __ffs((int)v) - 1;
#else
  return __builtin_ctz(v);
#endif
}
// fminf/fmaxf as pulsed_update.cpp's min_or/max_or (a NaN first argument gives the bound)
RPU_HD float min_or(float v, float bound) { return v < bound ? v : bound; }
RPU_HD float max_or(float v, float bound) { return v > bound ? v : bound; }
RPU_HD int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Slot positions per sample for trains of at most `bits` slots (a power of two that divides 32,
// or 32 / 64: one sample per word).
RPU_HD int slot_stride(int bits) {
  return bits <= 1 ? 1 : bits <= 2 ? 2 : bits <= 4 ? 4 : bits <= 8 ? 8 : bits <= 32 ? 32 : 64;
}
RPU_HD int log2_pow2(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

// The 16-bit threshold of a line (line_thresholds() in pulsed_update.cpp): a slot fires iff its
// 16-bit value u < t; t >= 65536 means every slot fires.
RPU_HD int32_t pulse_threshold(float v, float scale) {
  const float p = min_or(scale * fabsf(v), 1.0f);
  return p > 0.0f ? (int32_t)(p * 65536.0f + 0.5f) : 0;
}
// DETERMINISTIC_IMPLICIT: the pulse count of a line, round(p BL), and the coincidences of a
// pair, floor(xc dc / BL + r) (as pulsed_update.cpp).
RPU_HD float implicit_line_count(float v, float scale, int bl) {
  return bl > 0 ? roundf(min_or(scale * fabsf(v), 1.0f) * (float)bl) : 0.0f;
}
RPU_HD int implicit_pair_count(float xc, float dc, float blf, float r) {
  const float v = xc * dc / blf;
  return (int)floorf(v + r);
}

// The ConstantStep batch-aggregated step of one cross-point (apply_constant_row() in
// pulsed_update.cpp): `safe` says whether no bound can be reached; then *w_new is the result.
RPU_HD bool constant_step_sum(float wi, const DeviceCell &c, int32_t tot, int32_t up, float z, float sigma,
                              float reach_fwd, float reach_back, float *w_new) {
  const float cu = (float)up, cd = (float)(tot - up);
  const float su = max_or(c.dw_up, 0.0f), sd = max_or(c.dw_down, 0.0f);
  const float pu = su * cu, pd = sd * cd;
  const float hi = wi + (pu * reach_fwd + pd * reach_back);
  const float lo = wi - (pd * reach_fwd + pu * reach_back);
  const bool safe = (hi <= c.w_max) & (lo >= c.w_min);
  *w_new = wi + ((pu - pd) + sigma * sqrtf(su * pu + sd * pd) * z);
  return safe;
}

// Cycle-to-cycle normal k of cross-point `pair` (per-cross-point stream, see the file comment),
// caching the Philox block of the previous call.
struct PairNormals {
  uint64_t blk = ~0ull;
  float z0 = 0.0f, z1 = 0.0f, z2 = 0.0f, z3 = 0.0f;
  RPU_HD float get(uint64_t seed, uint64_t call, uint64_t pair, uint64_t k) {
    const uint64_t idx = (pair << 32) + k;
    if ((idx >> 2) != blk) {
      blk = idx >> 2;
      float z[4];
      normal4(rng_block(seed, TAG_PULSE_C2C, kC2cPair, call, blk), z);
      z0 = z[0];
      z1 = z[1];
      z2 = z[2];
      z3 = z[3];
    }
    const int q = (int)(idx & 3u);
    return q == 0 ? z0 : q == 1 ? z1 : q == 2 ? z2 : z3;
  }
};

// ---- data ------------------------------------------------------------------------------------------
struct TrainWord {
  uint32_t a;  // firing slots
  uint32_t b;  // the same bits where the line's value is <= 0 ("negative")
};
struct alignas(16) TrainWord2 {
  TrainWord e[2];
};
struct alignas(16) F4 {
  float v[4];
};

// What the scales kernel found for the whole batch (device memory).
struct BatchInfo {
  int max_bl;      // 0: nothing to update
  int bits;        // min(max_bl, 64)
  int S, lgS;      // slot stride per sample and its log2
  int any_unsafe;  // ConstantStep: some cross-point goes pulse by pulse
};

struct NoState {};
struct NoShared {};

// ---- 1. per-sample max|x| and max|d| (one block per sample) ------------------------------------
struct AbsMaxBody {
  using State = NoState;
  struct Shared {
    float x[kBlock], d[kBlock];
  };
  const float *X, *D;
  int M, K;
  float *xmax, *dmax;

  template <class Ex>
  RPU_HD void block(Ex &ex, int bx, int, int) const {
    const int64_t n = bx;
    ex.each([&](int tid, State &) {
      float a = 0.0f, c = 0.0f;
      for (int i = tid; i < K; i += kBlock) a = max_or(fabsf(X[n * K + i]), a);
      for (int j = tid; j < M; j += kBlock) c = max_or(fabsf(D[n * M + j]), c);
      ex.sh().x[tid] = a;
      ex.sh().d[tid] = c;
    });
    ex.sync();
    for (int stride = kBlock / 2; stride > 0; stride >>= 1) {  // max is exact in any order
      ex.each([&](int tid, State &) {
        if (tid < stride) {
          ex.sh().x[tid] = max_or(ex.sh().x[tid + stride], ex.sh().x[tid]);
          ex.sh().d[tid] = max_or(ex.sh().d[tid + stride], ex.sh().d[tid]);
        }
      });
      ex.sync();
    }
    ex.each([&](int tid, State &) {
      if (tid == 0) {
        xmax[n] = ex.sh().x[0];
        dmax[n] = ex.sh().d[0];
      }
    });
  }
};

// ---- 2. scales of every sample, the batch's BL and slot layout (one block) ----------------------
struct ScalesBody {
  struct State {
    int max_bl;
  };
  struct Shared {
    int red[kBlock];
  };
  const float *xmax, *dmax;
  int N;
  float lr, dw_min;
  UpdateParameters up;
  PulseScales *sc;
  BatchInfo *info;

  template <class Ex>
  RPU_HD void block(Ex &ex, int, int, int) const {
    ex.each([&](int tid, State &) {
      int m = 0;
      for (int n = tid; n < N; n += kBlock) {
        const PulseScales s = pulse_scales_hd(xmax[n], dmax[n], lr, dw_min, up, 0);
        sc[n] = s;
        m = s.bl > m ? s.bl : m;
      }
      ex.sh().red[tid] = m;
    });
    ex.sync();
    for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
      ex.each([&](int tid, State &) {
        if (tid < stride && ex.sh().red[tid + stride] > ex.sh().red[tid]) ex.sh().red[tid] = ex.sh().red[tid + stride];
      });
      ex.sync();
    }
    ex.each([&](int tid, State &st) {
      const int max_bl = ex.sh().red[0];
      st.max_bl = max_bl;
      // with fixed_bl one BL serves the whole batch
      if (max_bl > 0 && up.fixed_bl && up.update_bl_management) {
        for (int n = tid; n < N; n += kBlock)
          if (sc[n].bl > 0) sc[n] = pulse_scales_hd(xmax[n], dmax[n], lr, dw_min, up, max_bl);
      }
      if (tid == 0) {
        BatchInfo b;
        b.max_bl = max_bl;
        b.bits = max_bl < kMaxBits ? max_bl : kMaxBits;
        b.S = slot_stride(b.bits);
        b.lgS = log2_pow2(b.S);
        b.any_unsafe = 0;
        *info = b;
      }
    });
  }
};

// Words of a chunk of nc samples with slot stride S.
RPU_HD int words_of(int nc, int S) { return (int)(((int64_t)nc * S + 31) / 32); }

// ---- 3. pulse trains of one side for a chunk of samples ---------------------------------------------
// One thread per (word w, group of 8 lines): the words of the chunk's layout (file comment).
struct TrainGenBody {
  using State = NoState;
  using Shared = NoShared;
  const float *V;  // [N, L] (all samples)
  int L, Lp;       // lines, and the padded line count of `out` (a multiple of 8)
  int64_t kp8;     // the CPU's Philox layout: round_up(L, 8) / 8 blocks per slot
  int n0, nc;      // the chunk: samples n0 .. n0+nc-1
  int steps_alloc;
  const PulseScales *sc;
  bool d_side;
  uint64_t seed, call;
  const BatchInfo *info;
  bool only_if_unsafe;  // regenerating for the ConstantStep fix-up: skip when nothing is unsafe
  TrainWord *out;       // [steps_alloc, Lp]

  template <class Ex>
  RPU_HD void block(Ex &ex, int bx, int, int) const {
    if (info->max_bl <= 0) return;
    if (only_if_unsafe && !info->any_unsafe) return;
    const int S = info->S, lgS = info->lgS;
    const int nsteps = words_of(nc, S);
    const uint32_t tag = d_side ? TAG_PULSE_D : TAG_PULSE_X;
    ex.each([&](int tid, State &) {
      const int groups = Lp / 8;
      const int64_t g = (int64_t)bx * kBlock + tid;
      const int64_t w = g / groups;
      const int lg = (int)(g % groups);
      if (w >= steps_alloc) return;
      uint32_t a[8], b[8];
RPU_PU_UNROLL
      for (int e = 0; e < 8; ++e) a[e] = b[e] = 0u;
      if (w < nsteps) {
        const int64_t P0 = w * 32;  // first slot position of the word
        const int64_t nl_lo = P0 >> lgS;
        int64_t nl_hi = (P0 + 32 + S - 1) >> lgS;
        if (nl_hi > nc) nl_hi = nc;
        for (int64_t nl = nl_lo; nl < nl_hi; ++nl) {
          const int64_t n = n0 + nl;
          const PulseScales s = sc[n];
          const int bits = s.bl < kMaxBits ? s.bl : kMaxBits;
          if (bits <= 0) continue;
          const float scale = d_side ? s.d_scale : s.x_scale;
          int32_t thr[8];
          bool neg[8];
          bool random = false;  // some line fires with probability in (0, 1)
RPU_PU_UNROLL
          for (int e = 0; e < 8; ++e) {
            const int i = lg * 8 + e;
            thr[e] = 0;
            neg[e] = false;
            if (i < L) {
              const float v = V[n * L + i];
              thr[e] = pulse_threshold(v, scale);
              neg[e] = !(v > 0.0f);
            }
            random |= thr[e] > 0 && thr[e] < 65536;
          }
          const int64_t base = nl << lgS;  // position of slot 0 of sample nl
          const int s_lo = P0 > base ? (int)(P0 - base) : 0;
          const int64_t s_end = P0 + 32 - base;
          const int s_hi = s_end < bits ? (int)s_end : bits;
          uint32_t m[8];
RPU_PU_UNROLL
          for (int e = 0; e < 8; ++e) m[e] = 0u;
          for (int sl = s_lo; sl < s_hi; ++sl) {
            const int bit = (int)(base + sl - P0);
            Philox4 r;
            r.v[0] = r.v[1] = r.v[2] = r.v[3] = 0u;
            if (random) r = rng_block(seed, tag, 0, call, ((uint64_t)n * kMaxBits + (uint64_t)sl) * (uint64_t)kp8 + lg);
RPU_PU_UNROLL
            for (int e = 0; e < 8; ++e) {
              const int32_t u16 = (int32_t)((r.v[e >> 1] >> (16 * (e & 1))) & 0xFFFFu);
              const bool fire = thr[e] >= 65536 || u16 < thr[e];
              m[e] |= (uint32_t)fire << bit;
            }
          }
RPU_PU_UNROLL
          for (int e = 0; e < 8; ++e) {
            a[e] |= m[e];
            b[e] |= neg[e] ? m[e] : 0u;
          }
        }
      }
      TrainWord2 *o = reinterpret_cast<TrainWord2 *>(out + w * Lp + (int64_t)lg * 8);
RPU_PU_UNROLL
      for (int q = 0; q < 4; ++q) {
        TrainWord2 t;
        t.e[0].a = a[2 * q];
        t.e[0].b = b[2 * q];
        t.e[1].a = a[2 * q + 1];
        t.e[1].b = b[2 * q + 1];
        o[q] = t;
      }
    });
  }
};

// DETERMINISTIC_IMPLICIT: per (sample, line) the signed pulse count (+c where the value is > 0,
// -c otherwise); one thread per entry of [steps_alloc, Lp] (zero outside the chunk).
struct ImplicitGenBody {
  using State = NoState;
  using Shared = NoShared;
  const float *V;
  int L, Lp, n0, nc, steps_alloc;
  const PulseScales *sc;
  bool d_side;
  const BatchInfo *info;
  bool only_if_unsafe;
  float *out;

  template <class Ex>
  RPU_HD void block(Ex &ex, int bx, int, int) const {
    if (info->max_bl <= 0) return;
    if (only_if_unsafe && !info->any_unsafe) return;
    ex.each([&](int tid, State &) {
      const int64_t g = (int64_t)bx * kBlock + tid;
      const int64_t r = g / Lp;
      const int i = (int)(g % Lp);
      if (r >= steps_alloc) return;
      float c = 0.0f;
      if (r < nc && i < L) {
        const int64_t n = n0 + r;
        const PulseScales s = sc[n];
        const float v = V[n * L + i];
        c = implicit_line_count(v, d_side ? s.d_scale : s.x_scale, s.bl);
        c = v > 0.0f ? c : -c;
      }
      out[r * Lp + i] = c;
    });
  }
};

// ---- 4. tiles of W ----------------------------------------------------------------------------------
enum class Rep { WordsOne, WordsPacked, Implicit };  // S >= 32, S <= 8, implicit counts

struct TileShared {
  union {
    struct {
      TrainWord2 x[kWS][kBI / 2];
      TrainWord2 d[kWS][kBJ / 2];
    } w;
    struct {
      F4 x[kWS][kBI / 4];
      F4 d[kWS][kBJ / 4];
      float blf[kWS];
    } f;
  };
};

// What every tile body reads.
struct TileArgs {
  int M, K;
  int Kp, Mp;  // padded line counts of the staged arrays (multiples of kBI, kBJ)
  int gx;      // count/apply tiles along K
  int n0, nc;  // chunk
  int splits;  // count blocks per tile (each takes a share of the chunk's steps)
  const TrainWord *xw, *dw;  // [steps_alloc, Kp], [steps_alloc, Mp] (words)
  const float *xf, *df;      // the same for implicit counts
  const PulseScales *sc;
  const BatchInfo *info;
  uint64_t seed, call;
  bool sto_round;

  RPU_HD int steps(bool implicit) const { return implicit ? nc : words_of(nc, info->S); }
};

// Thread layout of the count and apply tiles: tx = tid % 16, ty = tid / 16; cross-point
// (jj, ii) of a thread is row ty + 16 jj and column 32 (ii / 2) + 2 tx + ii % 2 of the tile.
RPU_HD int tile_row(int tid, int jj) { return (tid >> 4) + 16 * jj; }
RPU_HD int tile_col(int tid, int ii) { return 32 * (ii >> 1) + 2 * (tid & 15) + (ii & 1); }

template <bool kImplicit>
RPU_HD void stage_load(const TileArgs &a, TileShared &sh, int bx, int by, int tid, int s0) {
  static_assert(kWS * kBJ / 4 == kBlock, "stage layout");
  if constexpr (!kImplicit) {
    for (int q = 0; q < (kWS * kBI / 2) / kBlock; ++q) {
      const int idx = tid + kBlock * q, r = idx / (kBI / 2), c = idx % (kBI / 2);
      sh.w.x[r][c] = reinterpret_cast<const TrainWord2 *>(a.xw + (int64_t)(s0 + r) * a.Kp + (int64_t)bx * kBI)[c];
    }
    for (int q = 0; q < (kWS * kBJ / 2) / kBlock; ++q) {
      const int idx = tid + kBlock * q, r = idx / (kBJ / 2), c = idx % (kBJ / 2);
      sh.w.d[r][c] = reinterpret_cast<const TrainWord2 *>(a.dw + (int64_t)(s0 + r) * a.Mp + (int64_t)by * kBJ)[c];
    }
  } else {
    for (int q = 0; q < (kWS * kBI / 4) / kBlock; ++q) {
      const int idx = tid + kBlock * q, r = idx / (kBI / 4), c = idx % (kBI / 4);
      sh.f.x[r][c] = reinterpret_cast<const F4 *>(a.xf + (int64_t)(s0 + r) * a.Kp + (int64_t)bx * kBI)[c];
    }
    {
      const int r = tid / (kBJ / 4), c = tid % (kBJ / 4);
      sh.f.d[r][c] = reinterpret_cast<const F4 *>(a.df + (int64_t)(s0 + r) * a.Mp + (int64_t)by * kBJ)[c];
    }
    if (tid < kWS) {
      const int r = s0 + tid;
      sh.f.blf[tid] = r < a.nc ? (float)a.sc[a.n0 + r].bl : 0.0f;
    }
  }
}

RPU_HD void atomic_add_u32(uint32_t *p, uint32_t v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;
#endif
}

// 4a. ConstantStep: coincidence counts of a tile over a share of the chunk's steps, packed as
// total + 65536 * up-pulses into cntp (stored, or added when several blocks share a tile).
struct CountState {
  uint32_t acc[kTJ][kTI];
};

template <Rep R>
struct CountBody {
  using State = CountState;
  using Shared = TileShared;
  TileArgs a;
  uint32_t *cntp;  // [M*K]

  template <class Ex>
  RPU_HD void block(Ex &ex, int bx, int by, int bz) const {
    constexpr bool kImplicit = R == Rep::Implicit;
    const BatchInfo *info = a.info;
    if (info->max_bl <= 0) return;
    if (!kImplicit && (info->S >= 32) != (R == Rep::WordsOne)) return;  // the other layout's kernel
    const int nsteps = a.steps(kImplicit);
    const int per = (int)round_up((nsteps + a.splits - 1) / a.splits, kWS);
    const int s_begin = bz * per, s_end = s_begin + per < nsteps ? s_begin + per : nsteps;
    if (s_begin >= s_end) return;  // (never with one split: a chunk has at least one step)
    ex.each([&](int, State &st) {
      RPU_PU_UNROLL
      for (int jj = 0; jj < kTJ; ++jj)
        RPU_PU_UNROLL
        for (int ii = 0; ii < kTI; ++ii) st.acc[jj][ii] = 0u;
    });
    // (the last stage may reach past nsteps into the zero padding of the trains)
    for (int s0 = s_begin; s0 < s_end; s0 += kWS) {
      ex.each([&](int tid, State &) { stage_load<kImplicit>(a, ex.sh(), bx, by, tid, s0); });
      ex.sync();
      ex.each([&](int tid, State &st) { count_stage(ex.sh(), tid, s0, bx, by, st); });
      ex.sync();
    }
    ex.each([&](int tid, State &st) {
      RPU_PU_UNROLL
      for (int jj = 0; jj < kTJ; ++jj) {
        const int64_t j = (int64_t)by * kBJ + tile_row(tid, jj);
        RPU_PU_UNROLL
        for (int ii = 0; ii < kTI; ++ii) {
          const int64_t i = (int64_t)bx * kBI + tile_col(tid, ii);
          if (j >= a.M || i >= a.K) continue;
          if (a.splits == 1) cntp[j * a.K + i] = st.acc[jj][ii];
          else if (st.acc[jj][ii]) atomic_add_u32(cntp + j * a.K + i, st.acc[jj][ii]);
        }
      }
    });
  }

  RPU_HD void count_stage(const TileShared &sh, int tid, int s0, int bx, int by, State &st) const {
    if constexpr (R == Rep::Implicit) {
      for (int r = 0; r < kWS; ++r) {
        const int nl = s0 + r;
        if (nl >= a.nc) break;
        const float blf = sh.f.blf[r];
        const int64_t n = a.n0 + nl;
        RPU_PU_UNROLL
        for (int jj = 0; jj < kTJ; ++jj) {
          const int jl = tile_row(tid, jj);
          const float dv = sh.f.d[r][jl >> 2].v[jl & 3];
          if (dv == 0.0f) continue;  // no pulses on the row (padding too)
          const int64_t j = (int64_t)by * kBJ + jl;
          RPU_PU_UNROLL
          for (int ii = 0; ii < kTI; ++ii) {
            const int il = tile_col(tid, ii);
            const float xv = sh.f.x[r][il >> 2].v[il & 3];
            if (xv == 0.0f) continue;  // floor(0 + r) = 0 (padding too)
            const int64_t i = (int64_t)bx * kBI + il;
            const float u =
                a.sto_round ? uniform_at(a.seed, TAG_UPDATE_ROUND, 0, a.call, ((uint64_t)n * a.M + j) * a.K + i) : 0.5f;
            const int c = implicit_pair_count(fabsf(xv), fabsf(dv), blf, u);
            const uint32_t sel = ((xv < 0.0f) != (dv < 0.0f)) ? 0x10001u : 1u;
            st.acc[jj][ii] += (uint32_t)c * sel;
          }
        }
      }
    } else {
      for (int r = 0; r < kWS; ++r) {
        uint32_t X[kTI], Xn[kTI];
        RPU_PU_UNROLL
        for (int k = 0; k < kTI / 2; ++k) {
          const TrainWord2 v = sh.w.x[r][k * 16 + (tid & 15)];
          X[2 * k] = v.e[0].a;
          Xn[2 * k] = v.e[0].b;
          X[2 * k + 1] = v.e[1].a;
          Xn[2 * k + 1] = v.e[1].b;
        }
        if constexpr (R == Rep::WordsOne) {
          // one sample per word: the signs of x and d are those of the whole word
          uint32_t sel[kTI];
          RPU_PU_UNROLL
          for (int ii = 0; ii < kTI; ++ii) sel[ii] = Xn[ii] ? 0x10001u : 1u;
          RPU_PU_UNROLL
          for (int jj = 0; jj < kTJ; ++jj) {
            const int jl = tile_row(tid, jj);
            const TrainWord dv = sh.w.d[r][jl >> 1].e[jl & 1];
            const uint32_t flip = dv.b ? 0x10000u : 0u;
            RPU_PU_UNROLL
            for (int ii = 0; ii < kTI; ++ii) st.acc[jj][ii] += (uint32_t)popc32(X[ii] & dv.a) * (sel[ii] ^ flip);
          }
        } else {
          RPU_PU_UNROLL
          for (int jj = 0; jj < kTJ; ++jj) {
            const int jl = tile_row(tid, jj);
            const TrainWord dv = sh.w.d[r][jl >> 1].e[jl & 1];
            RPU_PU_UNROLL
            for (int ii = 0; ii < kTI; ++ii) {
              const uint32_t t = X[ii] & dv.a, u = (X[ii] & dv.b) ^ (Xn[ii] & dv.a);
              st.acc[jj][ii] += (uint32_t)popc32(t) + ((uint32_t)popc32(u) << 16);
            }
          }
        }
      }
    }
  }
};

// 4b. ConstantStep: adds a chunk's counts to the sums of the previous ones; after the last chunk
// applies the batch-aggregated step where no bound can be reached and flags the other
// cross-points (unsafe[j*K + i] = 1, tile_flag of the tile, info->any_unsafe).
struct ApplyState {
  bool unsafe;
};

struct ApplyBody {
  using State = ApplyState;
  using Shared = NoShared;
  TileArgs a;
  const uint32_t *cntp;
  float *W;
  const DeviceCell *cells;
  float sigma, reach_fwd, reach_back;  // sigma = dw_min_std when noisy, else 0
  bool noisy;
  int64_t Kq;                 // K rounded up to 4 (layout of the aggregated normals)
  int32_t *cnt_tot, *cnt_up;  // [M*K] sums over the previous chunks (several chunks), else null
  bool first, last;           // chunk position
  uint8_t *unsafe;            // [M*K]
  int *tile_flag;             // [tiles]
  BatchInfo *info_rw;

  template <class Ex>
  RPU_HD void block(Ex &ex, int bx, int by, int) const {
    if (a.info->max_bl <= 0) return;
    ex.each([&](int tid, State &st) { finish(bx, by, tid, st); });
    if (!last) return;
    const bool any = ex.sync_or([&](int, State &st) { return st.unsafe; });
    ex.each([&](int tid, State &) {
      if (tid == 0) {
        tile_flag[(int64_t)by * a.gx + bx] = any ? 1 : 0;
        if (any) info_rw->any_unsafe = 1;
      }
    });
  }

  RPU_HD void finish(int bx, int by, int tid, State &st) const {
    st.unsafe = false;
    RPU_PU_UNROLL
    for (int jj = 0; jj < kTJ; ++jj) {
      const int64_t j = (int64_t)by * kBJ + tile_row(tid, jj);
      if (j >= a.M) continue;
      RPU_PU_UNROLL
      for (int k = 0; k < kTI / 2; ++k) {
        const int64_t i0 = (int64_t)bx * kBI + tile_col(tid, 2 * k);  // even; i0 + 1 is the other column
        int32_t tot[2] = {0, 0}, up[2] = {0, 0};
        RPU_PU_UNROLL
        for (int e = 0; e < 2; ++e) {
          const int64_t i = i0 + e, idx = j * a.K + i;
          if (i >= a.K) continue;
          const uint32_t acc = cntp[idx];
          tot[e] = (int32_t)(acc & 0xFFFFu);
          up[e] = (int32_t)(acc >> 16);
          if (cnt_tot) {
            if (!first) {
              tot[e] += cnt_tot[idx];
              up[e] += cnt_up[idx];
            }
            if (!last) {
              cnt_tot[idx] = tot[e];
              cnt_up[idx] = up[e];
            }
          }
        }
        if (!last) continue;
        float z[2] = {0.0f, 0.0f};
        if (noisy && (tot[0] != 0 || tot[1] != 0)) {
          // normals j*Kq + i of sub 1 (i0 even and Kq % 4 == 0: both in one Philox block)
          const uint64_t nidx = (uint64_t)j * (uint64_t)Kq + (uint64_t)i0;
          float zz[4];
          normal4(rng_block(a.seed, TAG_PULSE_C2C, kC2cDense, a.call, nidx >> 2), zz);
          const bool hi = (nidx & 3u) != 0;  // offset 0 or 2
          z[0] = hi ? zz[2] : zz[0];
          z[1] = hi ? zz[3] : zz[1];
        }
        RPU_PU_UNROLL
        for (int e = 0; e < 2; ++e) {
          const int64_t i = i0 + e, idx = j * a.K + i;
          if (i >= a.K) continue;
          bool flag = false;
          if (tot[e] != 0) {
            float wn;
            if (constant_step_sum(W[idx], cells[idx], tot[e], up[e], z[e], sigma, reach_fwd, reach_back, &wn))
              W[idx] = wn;
            else
              flag = true;
          }
          unsafe[idx] = flag ? 1 : 0;
          st.unsafe = st.unsafe || flag;
        }
      }
    }
  }
};

// 4c. Pulse by pulse, in sample order: devices whose step depends on w (every cross-point), and the
// ConstantStep cross-points flagged by ApplyBody (fixup).  One cross-point per thread, tiles of
// 16 x 16 (a tile lies inside one apply tile).
constexpr int kPB = 16;

struct PulseShared {
  union {
    struct {
      TrainWord x[kWS][kPB], d[kWS][kPB];
    } w;
    struct {
      float x[kWS][kPB], d[kWS][kPB], blf[kWS];
    } f;
  };
};

struct PulseState {
  bool on;
  float w;
  DeviceCell cell;
  PairNormals pn;
};

template <bool kImplicit>
struct PulseBody {
  using State = PulseState;
  using Shared = PulseShared;
  TileArgs a;
  DeviceParameters par;
  float *W;
  const DeviceCell *cells;
  bool noisy;
  bool fixup;
  const uint8_t *unsafe;
  const int *tile_flag;

  template <class Ex>
  RPU_HD void block(Ex &ex, int bx, int by, int) const {
    static_assert(kWS * kPB == kBlock && kBJ % kPB == 0 && kBI % kPB == 0, "pulse tile layout");
    const BatchInfo *info = a.info;
    if (info->max_bl <= 0) return;
    if (fixup && (!info->any_unsafe || !tile_flag[(int64_t)(by * kPB / kBJ) * a.gx + bx * kPB / kBI])) return;
    const int nsteps = a.steps(kImplicit);
    ex.each([&](int tid, State &st) {
      const int64_t j = (int64_t)by * kPB + (tid >> 4), i = (int64_t)bx * kPB + (tid & 15), idx = j * a.K + i;
      st.on = j < a.M && i < a.K && (!fixup || unsafe[idx]);
      st.pn = PairNormals();
      if (st.on) {
        st.w = W[idx];
        st.cell = cells[idx];
      }
    });
    for (int s0 = 0; s0 < nsteps; s0 += kWS) {
      ex.each([&](int tid, State &) {
        const int r = tid >> 4, c = tid & 15;
        Shared &sh = ex.sh();
        if constexpr (kImplicit) {
          sh.f.x[r][c] = a.xf[(int64_t)(s0 + r) * a.Kp + (int64_t)bx * kPB + c];
          sh.f.d[r][c] = a.df[(int64_t)(s0 + r) * a.Mp + (int64_t)by * kPB + c];
          if (tid < kWS) sh.f.blf[tid] = s0 + tid < a.nc ? (float)a.sc[a.n0 + s0 + tid].bl : 0.0f;
        } else {
          sh.w.x[r][c] = a.xw[(int64_t)(s0 + r) * a.Kp + (int64_t)bx * kPB + c];
          sh.w.d[r][c] = a.dw[(int64_t)(s0 + r) * a.Mp + (int64_t)by * kPB + c];
        }
      });
      ex.sync();
      ex.each([&](int tid, State &st) {
        if (st.on) pulse_stage(ex.sh(), tid, s0, (int64_t)by * kPB + (tid >> 4), (int64_t)bx * kPB + (tid & 15), st);
      });
      ex.sync();
    }
    ex.each([&](int tid, State &st) {
      if (st.on) W[((int64_t)by * kPB + (tid >> 4)) * a.K + (int64_t)bx * kPB + (tid & 15)] = st.w;
    });
  }

  RPU_HD void pulse_stage(const Shared &sh, int tid, int s0, int64_t j, int64_t i, State &st) const {
    const int tx = tid & 15, ty = tid >> 4;
    const uint64_t pair = (uint64_t)(j * a.K + i);
    float w = st.w;
    for (int r = 0; r < kWS; ++r) {
      const int step = s0 + r;
      if constexpr (kImplicit) {
        if (step >= a.nc) break;
        const float dv = sh.f.d[r][ty], xv = sh.f.x[r][tx];
        if (dv == 0.0f || xv == 0.0f) continue;
        const int64_t n = a.n0 + step;
        const float u =
            a.sto_round ? uniform_at(a.seed, TAG_UPDATE_ROUND, 0, a.call, ((uint64_t)n * a.M + j) * a.K + i) : 0.5f;
        const int c = implicit_pair_count(fabsf(xv), fabsf(dv), sh.f.blf[r], u);
        const int dir = ((xv < 0.0f) != (dv < 0.0f)) ? 1 : -1;  // up where the signs differ
        for (int p = 0; p < c; ++p) {
          const float xi = noisy ? st.pn.get(a.seed, a.call, pair, (uint64_t)n * kMaxBits + p) : 0.0f;
          w = device_pulse(par, st.cell, w, dir, xi);
        }
      } else {
        const TrainWord xv = sh.w.x[r][tx], dv = sh.w.d[r][ty];
        uint32_t t = xv.a & dv.a;
        if (!t) continue;
        const uint32_t differ = xv.b ^ dv.b;  // bit set: the pulse goes up
        while (t) {  // in slot order: samples in order
          const int b = ctz32(t);
          t &= t - 1u;
          const int dir = ((differ >> b) & 1u) ? 1 : -1;
          float xi = 0.0f;
          if (noisy) {
            const int64_t P = (int64_t)step * 32 + b;  // slot position in the chunk
            const uint64_t n = (uint64_t)(a.n0 + (P >> a.info->lgS)), s = (uint64_t)(P & (a.info->S - 1));
            xi = st.pn.get(a.seed, a.call, pair, n * kMaxBits + s);
          }
          w = device_pulse(par, st.cell, w, dir, xi);
        }
      }
    }
    st.w = w;
  }
};

// ---- orchestration -------------------------------------------------------------------------------
// Test hooks: smaller chunks than the defaults (0 = default).
struct RunOptions {
  int max_chunk_steps = 0;
  size_t max_train_bytes = 0;
};

// The whole update on a backend `be` providing
//   T *be.alloc<T>(n)                       scratch, freed when `be` goes away (stream-ordered)
//   be.zero(p, bytes)                       memset
//   int be.sm_count()                       multiprocessors (sizes the split of the counts)
//   be.launch(gx, gy, gz, body, name)       body.block(ex, bx, by, bz) for every block of the grid
//   be.exact_update(W, M, K, X, D, N, lr)
template <class BE>
void run_pulsed_update(BE &be, float *W, int M, int K, const float *X, const float *D, int N, float lr,
                       const UpdateParameters &up, const DeviceParameters &par, const DeviceCell *cells,
                       uint64_t seed, uint64_t call, const RunOptions &opt = RunOptions()) {
  if (N <= 0 || M <= 0 || K <= 0 || lr == 0.0f) return;
  if (up.pulse_type == PulseType::None || par.type == DeviceType::FloatingPoint) {
    be.exact_update(W, M, K, X, D, N, lr);
    return;
  }
  const bool implicit = up.pulse_type == PulseType::DeterministicImplicit;
  const bool constant = par.type == DeviceType::ConstantStep;

  // 1-2: scales of every sample, the batch's BL
  BatchInfo *info = be.template alloc<BatchInfo>(1);
  PulseScales *sc = be.template alloc<PulseScales>((size_t)N);
  float *xmax = be.template alloc<float>((size_t)N), *dmax = be.template alloc<float>((size_t)N);
  be.launch(N, 1, 1, AbsMaxBody{X, D, M, K, xmax, dmax}, "pulsed_update: max|x|, max|d|");
  be.launch(1, 1, 1, ScalesBody{xmax, dmax, N, lr, par.dw_min, up, sc, info}, "pulsed_update: scales");

  // chunks of samples: the host knows only an upper bound of the slot stride
  const int Kp = (int)round_up(K, kBI), Mp = (int)round_up(M, kBJ), gx = Kp / kBI, gy = Mp / kBJ;
  const int S_max = slot_stride(up.desired_bl < kMaxBits ? up.desired_bl : kMaxBits);
  const size_t entry = implicit ? sizeof(float) : sizeof(TrainWord);
  int64_t steps_chunk = implicit ? kMaxStepsImplicit : kMaxStepsWords;
  if (opt.max_chunk_steps > 0 && opt.max_chunk_steps < steps_chunk) steps_chunk = opt.max_chunk_steps;
  const size_t byte_cap = opt.max_train_bytes ? opt.max_train_bytes : kMaxTrainBytes;
  const int64_t steps_mem = (int64_t)(byte_cap / ((size_t)(Kp + Mp) * entry));
  if (steps_mem < steps_chunk) steps_chunk = steps_mem;
  steps_chunk = steps_chunk / kWS * kWS;
  if (steps_chunk < kWS) steps_chunk = kWS;
  int64_t Nc = implicit ? steps_chunk : S_max >= 32 ? steps_chunk / (S_max / 32) : steps_chunk * (32 / S_max);
  if (Nc > N) Nc = N;
  const int nchunks = (int)((N + Nc - 1) / Nc);
  const int steps_alloc = (int)round_up(implicit ? Nc : ((int64_t)Nc * S_max + 31) / 32, kWS);
  // count blocks per tile: enough blocks to fill the device (small tiles split their steps)
  int64_t splits = ((int64_t)6 * be.sm_count() + (int64_t)gx * gy - 1) / ((int64_t)gx * gy);
  if (splits > steps_alloc / kWS) splits = steps_alloc / kWS;
  if (splits < 1) splits = 1;

  TrainWord *xw = nullptr, *dw = nullptr;
  float *xf = nullptr, *df = nullptr;
  if (implicit) {
    xf = be.template alloc<float>((size_t)steps_alloc * Kp);
    df = be.template alloc<float>((size_t)steps_alloc * Mp);
  } else {
    xw = be.template alloc<TrainWord>((size_t)steps_alloc * Kp);
    dw = be.template alloc<TrainWord>((size_t)steps_alloc * Mp);
  }
  uint32_t *cntp = nullptr;
  uint8_t *unsafe = nullptr;
  int *tile_flag = nullptr;
  int32_t *cnt_tot = nullptr, *cnt_up = nullptr;
  if (constant) {
    cntp = be.template alloc<uint32_t>((size_t)M * K);
    unsafe = be.template alloc<uint8_t>((size_t)M * K);
    tile_flag = be.template alloc<int>((size_t)gx * gy);
    if (nchunks > 1) {
      cnt_tot = be.template alloc<int32_t>((size_t)M * K);
      cnt_up = be.template alloc<int32_t>((size_t)M * K);
    }
  }

  TileArgs ta;
  ta.M = M;
  ta.K = K;
  ta.Kp = Kp;
  ta.Mp = Mp;
  ta.gx = gx;
  ta.n0 = 0;
  ta.nc = 0;
  ta.splits = (int)splits;
  ta.xw = xw;
  ta.dw = dw;
  ta.xf = xf;
  ta.df = df;
  ta.sc = sc;
  ta.info = info;
  ta.seed = seed;
  ta.call = call;
  ta.sto_round = up.sto_round;

  const bool noisy = par.dw_min_std > 0.0f;
  const int pgx = (K + kPB - 1) / kPB, pgy = (M + kPB - 1) / kPB;
  auto generate = [&](int n0, int nc, bool only_if_unsafe) {
    if (implicit) {
      const int64_t tx = (int64_t)steps_alloc * Kp, td = (int64_t)steps_alloc * Mp;
      be.launch((int)((tx + kBlock - 1) / kBlock), 1, 1,
                ImplicitGenBody{X, K, Kp, n0, nc, steps_alloc, sc, false, info, only_if_unsafe, xf},
                "pulsed_update: implicit counts x");
      be.launch((int)((td + kBlock - 1) / kBlock), 1, 1,
                ImplicitGenBody{D, M, Mp, n0, nc, steps_alloc, sc, true, info, only_if_unsafe, df},
                "pulsed_update: implicit counts d");
    } else {
      const int64_t tx = (int64_t)steps_alloc * (Kp / 8), td = (int64_t)steps_alloc * (Mp / 8);
      be.launch((int)((tx + kBlock - 1) / kBlock), 1, 1,
                TrainGenBody{X, K, Kp, round_up(K, 8) / 8, n0, nc, steps_alloc, sc, false, seed, call, info,
                             only_if_unsafe, xw},
                "pulsed_update: trains x");
      be.launch((int)((td + kBlock - 1) / kBlock), 1, 1,
                TrainGenBody{D, M, Mp, round_up(M, 8) / 8, n0, nc, steps_alloc, sc, true, seed, call, info,
                             only_if_unsafe, dw},
                "pulsed_update: trains d");
    }
  };
  auto pulses = [&](const TileArgs &t, bool fixup) {
    if (implicit)
      be.launch(pgx, pgy, 1, PulseBody<true>{t, par, W, cells, noisy, fixup, unsafe, tile_flag},
                "pulsed_update: pulses (implicit)");
    else
      be.launch(pgx, pgy, 1, PulseBody<false>{t, par, W, cells, noisy, fixup, unsafe, tile_flag},
                "pulsed_update: pulses");
  };

  const float sigma = par.dw_min_std;
  for (int c = 0; c < nchunks; ++c) {
    const int n0 = (int)(c * Nc), nc = (int)(N - n0 < Nc ? N - n0 : Nc);
    generate(n0, nc, false);
    TileArgs t = ta;
    t.n0 = n0;
    t.nc = nc;
    if (!constant) {
      pulses(t, false);
      continue;
    }
    if (splits > 1) be.zero(cntp, sizeof(uint32_t) * (size_t)M * K);
    if (implicit) {
      be.launch(gx, gy, (int)splits, CountBody<Rep::Implicit>{t, cntp}, "pulsed_update: counts (implicit)");
    } else {
      be.launch(gx, gy, (int)splits, CountBody<Rep::WordsOne>{t, cntp}, "pulsed_update: counts");
      be.launch(gx, gy, (int)splits, CountBody<Rep::WordsPacked>{t, cntp}, "pulsed_update: counts (packed)");
    }
    ApplyBody ap;
    ap.a = t;
    ap.cntp = cntp;
    ap.W = W;
    ap.cells = cells;
    ap.sigma = noisy ? sigma : 0.0f;
    ap.reach_fwd = 1.0f + kXiBound * fabsf(sigma);
    ap.reach_back = max_or(kXiBound * fabsf(sigma) - 1.0f, 0.0f);
    ap.noisy = noisy;
    ap.Kq = round_up(K, 4);
    ap.cnt_tot = cnt_tot;
    ap.cnt_up = cnt_up;
    ap.first = c == 0;
    ap.last = c == nchunks - 1;
    ap.unsafe = unsafe;
    ap.tile_flag = tile_flag;
    ap.info_rw = info;
    be.launch(gx, gy, 1, ap, "pulsed_update: aggregated step");
  }
  if (!constant) return;
  // ConstantStep cross-points that might reach a bound: pulse by pulse, in sample order
  for (int c = 0; c < nchunks; ++c) {
    const int n0 = (int)(c * Nc), nc = (int)(N - n0 < Nc ? N - n0 : Nc);
    if (nchunks > 1) generate(n0, nc, true);  // (one chunk: its trains are still there)
    TileArgs t = ta;
    t.n0 = n0;
    t.nc = nc;
    pulses(t, true);
  }
}

}  // namespace pu
}  // namespace rpu
