// The pulsed update of SPEC §2.
//
// All random draws are Philox (rng.h), indexed so that results do not depend on the thread
// count or on the order in which threads run:
//
// 1. Per sample n (in parallel over samples): the scales of SPEC §2, then the pulse train of
//    every input line i and output line j as a bit mask of its BL slots.  Slot s of input line i
//    of sample n fires iff u < p_i (16-bit resolution), with u the 16-bit value number
//    (n*64 + s)*Kp + i of the TAG_PULSE_X stream (Kp = K rounded up to 8; 8 values per Philox
//    block, so every (n, s) starts on a block and a whole slot is one vectorized Philox run).
//    Output lines likewise with TAG_PULSE_D and Mp.  DETERMINISTIC_IMPLICIT uses the pulse
//    counts round(p BL), round(q BL) instead of trains.  Trains of more than 8 slots also get
//    per-slot lists of the firing input lines (so that the work is the number of coincidences).
// 2. Per row j of W (in parallel over rows; a row is handled by exactly one thread, in a fixed
//    order): the coincidences of row j with every input line, sample after sample.  The
//    coincidence count of (n, j, i) is popcount(train_x & train_d) (implicit: floor(xc dc / BL
//    + r), r = 1/2 or, with sto_round, the uniform number (n*M + j)*K + i of TAG_UPDATE_ROUND).
//    Each coincidence is one device pulse (device_pulse() of device_step.h) in direction
//    -sign(x_i d_j) with cycle-to-cycle factor (1 + dw_min_std xi).
//
//    * Devices whose step depends on w (LinearStep, SoftBounds, ExpStep, PowStep): every pulse
//      is applied, sample after sample.  The xi of the pulses of row j come from a per-row
//      sequential stream (TAG_PULSE_C2C, sub 2, normals number j*2^40, j*2^40 + 1, ...),
//      consumed in a fixed order (sample; then input line, or slot and input line).
//    * ConstantStep: the step does not depend on w, so as long as no bound is reached the
//      c_up up and c_dn down pulses of one cross-point over the whole batch give
//      w + dw_up c_up - dw_dn c_dn + dw_min_std sqrt(dw_up^2 c_up + dw_dn^2 c_dn) xi
//      (a sum of independent normals: exact in distribution), with xi the normal number
//      j*Kq + i of TAG_PULSE_C2C, sub 1 (Kq = K rounded up to 4).  "No bound is reached" is
//      checked conservatively, bounding every pulse's factor |1 + dw_min_std xi| by
//      1 + 8 dw_min_std (a standard normal beyond 8 has probability 1e-15): a cross-point whose
//      reachable range is not inside [w_min_ij, w_max_ij] is instead done pulse by pulse with
//      device_pulse() (per-row stream, sub 2): in sample order when it has pulses in both
//      directions, else in any order (its pulses are then i.i.d.).
//
// The CUDA twin (cuda/pulsed_update_kernels.h) uses the same numbers, except for the
// cycle-to-cycle noise of pulse-by-pulse updates (a per-cross-point stream there); pulse_scales()
// is shared with it (pulsed_update_math.h).
#include "pulsed_update.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "blas.h"
#include "pulsed_update_math.h"
#include "rng.h"
#include "threading.h"

// (define RPU_PU_GENERIC to build only the portable code, e.g. to compare results)
#if defined(__GNUC__) && defined(__x86_64__) && !defined(RPU_PU_GENERIC)
#include <immintrin.h>
#define RPU_PU_X86 1
#endif

// Hot loops are compiled twice (AVX2 and the baseline ISA) and picked at load time; Philox also
// has AVX2/AVX-512 integer kernels picked at run time.  The float code uses only exactly rounded
// operations ("avx2" does not enable FMA contraction; no avx512f clone for that reason), so every
// version gives bit-identical results (checked against a -DRPU_PU_GENERIC build).
#if defined(RPU_PU_X86) && !defined(__clang__) && defined(__linux__)
#define RPU_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define RPU_MULTIVERSION
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pulsed_update.cpp reads Philox words as 16-bit halves and assumes a little-endian host"
#endif

namespace rpu {

void exact_update(float *W, int M, int K, const float *X, const float *D, int N, float lr) {
  // W[M,K] += (-lr) * D^T[M,N] X[N,K]
  sgemm_parallel(true, false, M, K, N, -lr, D, M, X, K, 1.0f, W, K);
}

PulseScales pulse_scales(float x_max, float d_max, float lr, float dw_min, const UpdateParameters &up,
                         int bl_override) {
  return pulse_scales_hd(x_max, d_max, lr, dw_min, up, bl_override);  // shared with the CUDA twin
}

namespace {

// Per-sample array elements of one chunk of samples (pulse by pulse, see pulsed_update()); the
// environment variable RPU_PU_CHUNK (read at load time) sets another size, for tests: the
// result does not depend on it.
int64_t chunk_elements() {
  const char *env = std::getenv("RPU_PU_CHUNK");
  const long long v = env != nullptr ? std::atoll(env) : 0;
  return v > 0 ? (int64_t)v : (int64_t)1 << 20;
}
const int64_t kChunkElements = chunk_elements();
constexpr int kLanes = 64;        // Philox blocks per batch (the size rpu::philox_lanes fills)
constexpr int kMaxBits = 64;      // pulse slots representable in a train
constexpr float kXiBound = 8.0f;  // |xi| bound of the ConstantStep reach check
constexpr uint32_t kC2cDense = 1;  // TAG_PULSE_C2C sub-streams
constexpr uint32_t kC2cRow = 2;
constexpr int kRowShift = 40;  // per-row stream of row j: normals number j << 40 ...

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
// fminf/fmaxf without the libm call: same result here (a NaN first argument gives the bound,
// as fminf/fmaxf do).
inline float min_or(float v, float bound) { return v < bound ? v : bound; }
inline float max_or(float v, float bound) { return v > bound ? v : bound; }

// ---- Philox in bulk (rpu::philox_lanes, rng.h) ----------------------------------------------

struct StreamKey {
  uint64_t seed, call;
  uint32_t tag, sub;
  uint32_t c2, c3, k0, k1;
  StreamKey(uint64_t seed_, uint32_t tag_, uint32_t sub_, uint64_t call_)
      : seed(seed_), call(call_), tag(tag_), sub(sub_), c2((uint32_t)call_),
        c3((tag_ << 24) | ((sub_ & 0xFFu) << 16) | (uint32_t)((call_ >> 32) & 0xFFFFu)),
        k0((uint32_t)seed_),
        k1((uint32_t)(seed_ >> 32)) {}
};

// Runs fn(lo, hi, n, done) over batches of at most kLanes blocks of block0 .. block0+nblocks-1
// that do not carry out of the low counter word.
template <class F>
void for_block_batches(int64_t nblocks, uint64_t block0, F fn) {
  int64_t done = 0;
  while (done < nblocks) {
    const uint64_t b = block0 + (uint64_t)done;
    int n = (int)std::min<int64_t>(kLanes, nblocks - done);
    const uint64_t room = 0x100000000ull - (b & 0xFFFFFFFFull);
    if ((uint64_t)n > room) n = (int)room;
    fn((uint32_t)b, (uint32_t)(b >> 32), n, done);
    done += n;
  }
}

// The 4 words of the blocks block0 .. block0+nblocks-1 of a stream, in order (word 4b+k is word k
// of block b: the same values as rng_block()).
void philox_words(uint32_t *out, int64_t nblocks, const StreamKey &s, uint64_t block0) {
  alignas(64) uint32_t w[4][kLanes];
  for_block_batches(nblocks, block0, [&](uint32_t lo, uint32_t hi, int n, int64_t done) {
    philox_lanes(lo, n, hi, s.c2, s.c3, s.k0, s.k1, w);
    uint32_t *o = out + 4 * done;
    for (int l = 0; l < n; ++l) {
      o[4 * l + 0] = w[0][l];
      o[4 * l + 1] = w[1][l];
      o[4 * l + 2] = w[2][l];
      o[4 * l + 3] = w[3][l];
    }
  });
}

// Uniforms (0, 1) number index0 .. index0+L-1 of a stream (the same values as uniform_at()).
void uniform_range(float *out, int64_t L, const StreamKey &s, uint64_t index0, std::vector<uint32_t> &scratch) {
  const uint64_t off = index0 & 3u;
  const int64_t nblocks = (int64_t)((off + (uint64_t)L + 3) / 4);
  scratch.resize((size_t)nblocks * 4);
  philox_words(scratch.data(), nblocks, s, index0 >> 2);
  for (int64_t t = 0; t < L; ++t) out[t] = u01(scratch[off + (uint64_t)t]);
}

// Standard normals number base .. base+L-1 of a stream (base % 4 == 0): normal_at()'s values.
inline void normals(float *out, int64_t L, const StreamKey &s, uint64_t base) {
  fill_normal_bulk(out, L, s.seed, s.tag, s.sub, s.call, base);
}

// ---- pulse trains ---------------------------------------------------------------------------

// Thresholds of the lines: a slot fires iff u16 < thr (thr = round(p 2^16), "always" when that
// is 2^16), and the sign masks (0xFF where the value is not positive).  Returns whether any
// line can fire.
RPU_MULTIVERSION
int line_thresholds(const float *v, int L, float scale, uint16_t *thr, uint8_t *always, uint8_t *neg) {
  int any = 0;
#pragma omp simd reduction(| : any)
  for (int i = 0; i < L; ++i) {
    neg[i] = v[i] > 0.0f ? 0 : 0xFF;
    const float p = min_or(scale * fabsf(v[i]), 1.0f);
    const int32_t t = p > 0.0f ? (int32_t)(p * 65536.0f + 0.5f) : 0;
    always[i] = t >= 65536 ? 1 : 0;
    thr[i] = (uint16_t)(t < 65535 ? t : 65535);
    any |= t > 0 ? 1 : 0;
  }
  return any;
}

RPU_MULTIVERSION
void pack_slot_u8(const uint16_t *u, const uint16_t *thr, int L, int s, uint8_t *out) {
  for (int i = 0; i < L; ++i) out[i] = (uint8_t)(out[i] | (uint8_t)((u[i] < thr[i] ? 1u : 0u) << s));
}

RPU_MULTIVERSION
void pack_slot_u64(const uint16_t *u, const uint16_t *thr, int L, int s, uint64_t *out) {
  for (int i = 0; i < L; ++i) out[i] |= (uint64_t)(u[i] < thr[i] ? 1u : 0u) << s;
}

struct TrainScratch {
  std::vector<uint32_t> words;
  std::vector<uint16_t> thr;
  std::vector<uint8_t> always;
};

// Trains of the L lines of one sample (values v, probability scale `scale`, `bits` slots) into
// out8 or out64 (the other one is null), and their sign masks.
void make_trains(const float *v, int L, float scale, int bits, const StreamKey &key, uint64_t n, uint8_t *out8,
                 uint64_t *out64, uint8_t *neg, TrainScratch &ts) {
  const int64_t Lp = round_up(L, 8);
  ts.thr.resize((size_t)L);
  ts.always.resize((size_t)L);
  const bool any = line_thresholds(v, L, scale, ts.thr.data(), ts.always.data(), neg) != 0;
  if (out8) std::memset(out8, 0, (size_t)L);
  else std::memset(out64, 0, sizeof(uint64_t) * (size_t)L);
  if (!any || bits <= 0) return;
  ts.words.resize((size_t)Lp / 2);
  const uint16_t *u = reinterpret_cast<const uint16_t *>(ts.words.data());
  for (int s = 0; s < bits; ++s) {
    const uint64_t v0 = (n * kMaxBits + (uint64_t)s) * (uint64_t)Lp;  // 16-bit value index, % 8 == 0
    philox_words(ts.words.data(), Lp / 8, key, v0 / 8);
    if (out8) pack_slot_u8(u, ts.thr.data(), L, s, out8);
    else pack_slot_u64(u, ts.thr.data(), L, s, out64);
  }
  const uint64_t full = bits >= 64 ? ~0ull : ((1ull << bits) - 1);
  for (int i = 0; i < L; ++i)
    if (ts.always[i]) {
      if (out8) out8[i] = (uint8_t)full;
      else out64[i] = full;
    }
}

// ---- ConstantStep: coincidence counts accumulated over the batch ---------------------------

// tot += popcount(xb & db), up += the same where the pulse goes up (sign(x) != sign(d)).
RPU_MULTIVERSION
void accum_u8(const uint8_t *xb, const uint8_t *xneg, uint8_t db, uint8_t dneg, uint16_t *tot, uint16_t *up, int K) {
  for (int i = 0; i < K; ++i) {
    uint8_t v = (uint8_t)(xb[i] & db);
    v = (uint8_t)(v - ((v >> 1) & 0x55));
    v = (uint8_t)((v & 0x33) + ((v >> 2) & 0x33));
    v = (uint8_t)((v + (v >> 4)) & 0x0F);
    tot[i] = (uint16_t)(tot[i] + v);
    up[i] = (uint16_t)(up[i] + (uint8_t)(v & (xneg[i] ^ dneg)));
  }
}

// The same for one-slot trains (the bits are the counts).
RPU_MULTIVERSION
void accum_u8_1(const uint8_t *xb, const uint8_t *xneg, uint8_t dneg, uint16_t *tot, uint16_t *up, int K) {
  for (int i = 0; i < K; ++i) {
    const uint8_t v = xb[i];
    tot[i] = (uint16_t)(tot[i] + v);
    up[i] = (uint16_t)(up[i] + (uint8_t)(v & (xneg[i] ^ dneg)));
  }
}

RPU_MULTIVERSION
void accum_u64(const uint64_t *xb, const uint8_t *xneg, uint64_t db, uint8_t dneg, int32_t *tot, int32_t *up, int K) {
  for (int i = 0; i < K; ++i) {
    const int32_t c = (int32_t)__builtin_popcountll(xb[i] & db);
    tot[i] += c;
    up[i] += (xneg[i] ^ dneg) ? c : 0;
  }
}

// Implicit pulse type: counts floor(xc dcv / bl + r) with r = 1/2 or the uniforms u.
RPU_MULTIVERSION
void accum_implicit(const float *xc, const uint8_t *xneg, float dcv, float blf, const float *u, uint8_t dneg,
                    int32_t *tot, int32_t *up, int K) {
  for (int i = 0; i < K; ++i) {
    const float v = xc[i] * dcv / blf;
    const int32_t c = (int32_t)std::floor(v + (u ? u[i] : 0.5f));
    tot[i] += c;
    up[i] += (xneg[i] ^ dneg) ? c : 0;
  }
}

RPU_MULTIVERSION
void flush_u16(uint16_t *t16, uint16_t *u16, int32_t *tot, int32_t *up, int K) {
  for (int i = 0; i < K; ++i) {
    tot[i] += t16[i];
    up[i] += u16[i];
    t16[i] = 0;
    u16[i] = 0;
  }
}

// The step sizes and bounds of a row of cells as separate arrays.
void cells_soa(const DeviceCell *cells, int K, float *dwu, float *dwd, float *wmax, float *wmin) {
  static_assert(sizeof(DeviceCell) == 6 * sizeof(float), "DeviceCell layout");
  int i = 0;
#ifdef RPU_PU_X86
  const float *cf = reinterpret_cast<const float *>(cells);  // [K, 6]: dw_up, dw_down, w_max, w_min, ...
  for (; i + 4 <= K; i += 4) {
    __m128 r0 = _mm_loadu_ps(cf + 6 * i), r1 = _mm_loadu_ps(cf + 6 * i + 6);
    __m128 r2 = _mm_loadu_ps(cf + 6 * i + 12), r3 = _mm_loadu_ps(cf + 6 * i + 18);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(dwu + i, r0);
    _mm_storeu_ps(dwd + i, r1);
    _mm_storeu_ps(wmax + i, r2);
    _mm_storeu_ps(wmin + i, r3);
  }
#endif
  for (; i < K; ++i) {
    dwu[i] = cells[i].dw_up;
    dwd[i] = cells[i].dw_down;
    wmax[i] = cells[i].w_max;
    wmin[i] = cells[i].w_min;
  }
}

// Applies the accumulated pulses of one row where no bound can be reached; sets unsafe[i] for
// the other cross-points with pulses.  Returns the number of those.
RPU_MULTIVERSION
int apply_constant_row(float *w, const float *dwu, const float *dwd, const float *wmax, const float *wmin,
                       const int32_t *tot, const int32_t *up, const float *z, float sigma, float reach_fwd,
                       float reach_back, int K, uint8_t *unsafe) {
  int n_unsafe = 0;
#pragma omp simd reduction(+ : n_unsafe)
  for (int i = 0; i < K; ++i) {
    const int32_t t = tot[i];
    const float cu = (float)up[i], cd = (float)(t - up[i]);
    const float su = max_or(dwu[i], 0.0f), sd = max_or(dwd[i], 0.0f);
    const float pu = su * cu, pd = sd * cd;
    const float wi = w[i];
    const float hi = wi + (pu * reach_fwd + pd * reach_back);
    const float lo = wi - (pd * reach_fwd + pu * reach_back);
    const int safe = (hi <= wmax[i]) & (lo >= wmin[i]);
    const float wn = wi + ((pu - pd) + sigma * sqrtf(su * pu + sd * pd) * z[i]);
    const int act = t != 0;
    w[i] = (act & safe) ? wn : wi;
    const int bad = act & (1 - safe);
    unsafe[i] = (uint8_t)bad;
    n_unsafe += bad;
  }
  return n_unsafe;
}

// ---- pulse by pulse -------------------------------------------------------------------------

// The per-row sequential stream of cycle-to-cycle normals (TAG_PULSE_C2C, sub kC2cRow).
class RowNormals {
 public:
  RowNormals(const StreamKey &key, int64_t row) : key_(key), next_((uint64_t)row << kRowShift) {}
  float get() {
    if (pos_ == len_) refill();
    return buf_[pos_++];
  }

 private:
  void refill() {
    normals(buf_, chunk_, key_, next_);
    next_ += (uint64_t)chunk_;
    len_ = chunk_;
    pos_ = 0;
    chunk_ = std::min(chunk_ * 2, 256);  // grow: rows with few pulses draw few numbers
  }
  StreamKey key_;
  uint64_t next_;
  int pos_ = 0, len_ = 0, chunk_ = 16;
  float buf_[256];
};

inline float apply_pulses(const DeviceParameters &par, const DeviceCell &cell, float w, int dir, int count,
                          bool noisy, RowNormals &rn) {
  for (int c = 0; c < count; ++c) w = device_pulse(par, cell, w, dir, noisy ? rn.get() : 0.0f);
  return w;
}

// The rows of X, from memory or made by a RowBlockFn in blocks of kRowBlock (one reader per
// thread, rows asked in increasing order).
class RowReader {
 public:
  RowReader(const float *X, const RowBlockFn *fn, int K, int64_t N) : X_(X), fn_(fn), K_(K), N_(N) {}
  const float *row(int64_t n) {
    if (X_ != nullptr) return X_ + n * K_;
    if (n < b0_ || n >= b0_ + cnt_) {
      b0_ = n;
      cnt_ = (int)std::min<int64_t>(kRowBlock, N_ - n);
      buf_.resize((size_t)kRowBlock * K_);
      (*fn_)(b0_, cnt_, buf_.data());
    }
    return buf_.data() + (n - b0_) * K_;
  }

 private:
  const float *X_;
  const RowBlockFn *fn_;
  int K_;
  int64_t N_, b0_ = 0;
  int cnt_ = 0;
  std::vector<float> buf_;
};

// Everything phase 2 needs, for the samples n0 .. n0+N-1 of the batch (a chunk: see
// pulsed_update()).  Input-line arrays are [N, K], output-line arrays [N, M], indexed by the
// sample's place in the chunk; sc holds the scales of the whole batch.
struct Batch {
  int N = 0, M = 0, K = 0;
  int64_t work = 0;  // N * K * M of the whole update (small: every phase on the calling thread)
  int64_t n0 = 0;
  float *W = nullptr;
  const DeviceArray *dev = nullptr;
  uint64_t seed = 0, call = 0;
  bool implicit = false, sto_round = false, noisy = false;
  float sigma = 0.0f, reach_fwd = 1.0f, reach_back = 0.0f;
  std::vector<PulseScales> sc;
  const PulseScales &scale(int64_t n) const { return sc[n0 + n]; }  // n: place in the chunk
  // pulse by pulse: the cycle-to-cycle stream of each row, continued from chunk to chunk
  RowNormals *row_normals = nullptr;
  // stochastic trains: one of the 8-bit (all BL <= 8) and 64-bit forms
  bool narrow = true;
  int max_bits = 0;
  std::vector<uint8_t> x8, d8;
  std::vector<uint64_t> x64, d64;
  // implicit pulse counts
  std::vector<float> xc, dc;
  std::vector<uint8_t> xneg, dneg;  // 0xFF where the value is not positive
  // per sample: the input lines with pulses (pulse-by-pulse path, narrow trains)
  std::vector<int> xact, nxact;
  // wide trains, per sample, slot s and sign of x (part 2s: x > 0, part 2s+1: x <= 0): the input
  // lines firing in that slot, increasing (part p of sample n: slot_idx[n][slot_off[n*129 + p]
  // .. slot_off[n*129 + p + 1]))
  bool slot_lists = false;
  std::vector<std::vector<uint32_t>> slot_idx;  // per sample
  std::vector<int32_t> slot_off;                 // [N, 129]
  const uint32_t *part_begin(int64_t n, int p) const { return slot_idx[n].data() + slot_off[n * 129 + p]; }
  const uint32_t *part_end(int64_t n, int p) const { return slot_idx[n].data() + slot_off[n * 129 + p + 1]; }

  // row j, sample n: index t = n*M + j
  bool d_active(int64_t t) const {
    if (implicit) return dc[t] > 0.0f;
    return narrow ? d8[t] != 0 : d64[t] != 0;
  }
  uint64_t dtrain(int64_t t) const { return narrow ? d8[t] : d64[t]; }
  uint64_t xtrain(int64_t o) const { return narrow ? x8[o] : x64[o]; }
};

// Coincidences of (n, j, i) on the pulse-by-pulse paths; u: 1/2 or the sto_round uniform.
inline int pair_count(const Batch &b, int64_t n, int64_t j, int64_t i, float u) {
  const int64_t t = n * b.M + j;
  if (!b.implicit) return __builtin_popcountll(b.xtrain(n * b.K + i) & b.dtrain(t));
  const float v = b.xc[n * b.K + i] * b.dc[t] / (float)b.scale(n).bl;
  return (int)std::floor(v + u);
}

// acc += the coincidences of one (sample, row) from the per-slot lists of input lines, packed as
// count + 65536 * (count of up pulses); dneg: the sign mask of d.
inline void accum_slots(const Batch &b, int64_t n, uint64_t db, uint8_t dneg, uint32_t *acc) {
  // a pulse goes up where sign(x) != sign(d)
  const uint32_t inc_xpos = dneg ? 0x10001u : 1u, inc_xneg = dneg ? 1u : 0x10001u;
  while (db) {
    const int s = __builtin_ctzll(db);
    db &= db - 1;
    // the two parts of slot s are contiguous: one loop, the increment switches at the split
    const uint32_t *e = b.part_begin(n, 2 * s), *mid = b.part_end(n, 2 * s), *end = b.part_end(n, 2 * s + 1);
    for (; e + 4 <= mid; e += 4) {
      acc[e[0]] += inc_xpos;
      acc[e[1]] += inc_xpos;
      acc[e[2]] += inc_xpos;
      acc[e[3]] += inc_xpos;
    }
    for (; e < mid; ++e) acc[*e] += inc_xpos;
    for (; e + 4 <= end; e += 4) {
      acc[e[0]] += inc_xneg;
      acc[e[1]] += inc_xneg;
      acc[e[2]] += inc_xneg;
      acc[e[3]] += inc_xneg;
    }
    for (; e < end; ++e) acc[*e] += inc_xneg;
  }
}

RPU_MULTIVERSION
void flush_packed(uint32_t *acc, int32_t *tot, int32_t *up, int K) {
  for (int i = 0; i < K; ++i) {
    tot[i] += (int32_t)(acc[i] & 0xFFFFu);
    up[i] += (int32_t)(acc[i] >> 16);
    acc[i] = 0;
  }
}

// Rows jb .. je-1, pulse by pulse in sample order (devices with a w-dependent step).  kType >= 0
// fixes the device type at compile time (so that device_pulse() is specialized).
template <int kType>
__attribute__((always_inline)) inline void rows_pulse_by_pulse_t(const Batch &b, int64_t jb, int64_t je) {
  const int N = b.N, M = b.M, K = b.K;
  DeviceParameters par = b.dev->par;  // a local copy: no aliasing with W, constant type
  if (kType >= 0) par.type = (DeviceType)kType;
  const StreamKey rnd(b.seed, TAG_UPDATE_ROUND, 0, b.call);
  std::vector<float> uni(b.implicit && b.sto_round ? K : 0);
  std::vector<uint32_t> words;
  for (int64_t j = jb; j < je; ++j) {
    float *wrow = b.W + j * (int64_t)K;
    const DeviceCell *crow = b.dev->cells.data() + j * (int64_t)K;
    RowNormals &rn = b.row_normals[j];
    for (int64_t n = 0; n < N; ++n) {
      const int64_t t = n * M + j;
      if (!b.d_active(t)) continue;
      const uint8_t dn = b.dneg[t];
      const int *act = b.xact.data() + n * K;
      const int na = b.nxact[n];
      const uint8_t *xneg = b.xneg.data() + n * K;
      if (b.slot_lists) {
        // one pulse per listed entry, slot after slot (the pulses of one cross-point within a
        // sample all go the same way, so their order does not matter)
        uint64_t db = b.d64[t];
        const int dir_xpos = dn ? 1 : -1;  // up where sign(x) != sign(d)
        while (db) {
          const int s = __builtin_ctzll(db);
          db &= db - 1;
          for (int part = 0; part < 2; ++part) {
            const int dir = part == 0 ? dir_xpos : -dir_xpos;
            for (const uint32_t *e = b.part_begin(n, 2 * s + part), *end = b.part_end(n, 2 * s + part); e != end; ++e)
              wrow[*e] = apply_pulses(par, crow[*e], wrow[*e], dir, 1, b.noisy, rn);
          }
        }
      } else if (!b.implicit) {
        const uint64_t db = b.dtrain(t);
        for (int k = 0; k < na; ++k) {
          const int i = act[k];
          const int count = __builtin_popcountll(b.xtrain(n * K + i) & db);
          if (count <= 0) continue;
          wrow[i] = apply_pulses(par, crow[i], wrow[i], (xneg[i] ^ dn) ? 1 : -1, count, b.noisy, rn);
        }
      } else {
        if (b.sto_round) uniform_range(uni.data(), K, rnd, ((uint64_t)(b.n0 + n) * M + j) * K, words);
        for (int k = 0; k < na; ++k) {
          const int i = act[k];
          const int count = pair_count(b, n, j, i, b.sto_round ? uni[i] : 0.5f);
          if (count <= 0) continue;
          wrow[i] = apply_pulses(par, crow[i], wrow[i], (xneg[i] ^ dn) ? 1 : -1, count, b.noisy, rn);
        }
      }
    }
  }
}

RPU_MULTIVERSION
void rows_pulse_by_pulse(const Batch &b, int64_t jb, int64_t je) {
  switch (b.dev->par.type) {
    case DeviceType::SoftBounds: return rows_pulse_by_pulse_t<(int)DeviceType::SoftBounds>(b, jb, je);
    case DeviceType::LinearStep: return rows_pulse_by_pulse_t<(int)DeviceType::LinearStep>(b, jb, je);
    case DeviceType::ExpStep: return rows_pulse_by_pulse_t<(int)DeviceType::ExpStep>(b, jb, je);
    case DeviceType::PowStep: return rows_pulse_by_pulse_t<(int)DeviceType::PowStep>(b, jb, je);
    default: return rows_pulse_by_pulse_t<-1>(b, jb, je);
  }
}

// Rows jb .. je-1 of a ConstantStep array: counts over the batch, then one update per
// cross-point, or pulse by pulse where a bound might be reached.
RPU_MULTIVERSION
void rows_constant_step(const Batch &b, int64_t jb, int64_t je) {
  const int N = b.N, M = b.M, K = b.K;
  DeviceParameters par = b.dev->par;  // a local copy: no aliasing with W
  par.type = DeviceType::ConstantStep;
  const int64_t Kq = round_up(K, 4);
  const StreamKey dense(b.seed, TAG_PULSE_C2C, kC2cDense, b.call), c2c(b.seed, TAG_PULSE_C2C, kC2cRow, b.call),
      rnd(b.seed, TAG_UPDATE_ROUND, 0, b.call);
  const bool u16_path = b.narrow && !b.implicit;
  std::vector<int32_t> tot(K), upc(K);
  std::vector<uint16_t> t16(u16_path ? K : 0), u16(u16_path ? K : 0);
  std::vector<uint32_t> packed(b.slot_lists ? K : 0, 0u);
  std::vector<float> z(K, 0.0f), uni(b.implicit && b.sto_round ? K : 0);
  std::vector<float> dwu(K), dwd(K), wmax(K), wmin(K);
  std::vector<uint8_t> unsafe(K);
  std::vector<int> act_n, ev(N + 1), evc(N + 1);
  std::vector<uint32_t> words;
  act_n.reserve(N);
  for (int64_t j = jb; j < je; ++j) {
    float *wrow = b.W + j * (int64_t)K;
    const DeviceCell *crow = b.dev->cells.data() + j * (int64_t)K;
    act_n.clear();
    for (int n = 0; n < N; ++n)
      if (b.d_active((int64_t)n * M + j)) act_n.push_back(n);
    if (act_n.empty()) continue;

    std::fill(tot.begin(), tot.end(), 0);
    std::fill(upc.begin(), upc.end(), 0);
    int pending16 = 0, pending_packed = 0;
    for (int n : act_n) {
      const int64_t t = (int64_t)n * M + j;
      const uint8_t dn = b.dneg[t];
      const uint8_t *xneg = b.xneg.data() + (int64_t)n * K;
      if (b.implicit) {
        const float *u = nullptr;
        if (b.sto_round) {
          uniform_range(uni.data(), K, rnd, ((uint64_t)(b.n0 + n) * M + j) * K, words);
          u = uni.data();
        }
        accum_implicit(b.xc.data() + (int64_t)n * K, xneg, b.dc[t], (float)b.scale(n).bl, u, dn, tot.data(), upc.data(),
                       K);
      } else if (u16_path) {
        if (b.max_bits == 1) accum_u8_1(b.x8.data() + (int64_t)n * K, xneg, dn, t16.data(), u16.data(), K);
        else accum_u8(b.x8.data() + (int64_t)n * K, xneg, b.d8[t], dn, t16.data(), u16.data(), K);
        if (++pending16 == 8191) {  // 8191 * 8 pulses fit in 16 bits
          flush_u16(t16.data(), u16.data(), tot.data(), upc.data(), K);
          pending16 = 0;
        }
      } else if (b.slot_lists) {
        accum_slots(b, n, b.d64[t], dn, packed.data());
        if (++pending_packed == 1023) {  // 1023 * 64 pulses fit in 16 bits
          flush_packed(packed.data(), tot.data(), upc.data(), K);
          pending_packed = 0;
        }
      } else {
        accum_u64(b.x64.data() + (int64_t)n * K, xneg, b.d64[t], dn, tot.data(), upc.data(), K);
      }
    }
    if (pending16 > 0) flush_u16(t16.data(), u16.data(), tot.data(), upc.data(), K);
    if (pending_packed > 0) flush_packed(packed.data(), tot.data(), upc.data(), K);
    if (b.noisy) normals(z.data(), K, dense, (uint64_t)j * Kq);
    cells_soa(crow, K, dwu.data(), dwd.data(), wmax.data(), wmin.data());
    const int n_unsafe = apply_constant_row(wrow, dwu.data(), dwd.data(), wmax.data(), wmin.data(), tot.data(),
                                            upc.data(), z.data(), b.noisy ? b.sigma : 0.0f, b.reach_fwd,
                                            b.reach_back, K, unsafe.data());
    if (n_unsafe == 0) continue;
    // Cross-points that might reach a bound: pulse by pulse.  All pulses of a cross-point in one
    // direction are i.i.d., so their order does not matter; with both directions the pulses
    // are applied in sample order.
    RowNormals rn(c2c, j);
    for (int i = 0; i < K; ++i) {
      if (!unsafe[i]) continue;
      const int cu = upc[i], cd = tot[i] - upc[i];
      if (cu == 0 || cd == 0) {
        wrow[i] = apply_pulses(par, crow[i], wrow[i], cu > 0 ? 1 : -1, cu + cd, b.noisy, rn);
        continue;
      }
      // samples with a coincidence at (j, i), in order (branch-free compaction)
      int ne = 0;
      if (u16_path) {
        for (int n : act_n) {
          ev[ne] = n;
          ne += (b.x8[(int64_t)n * K + i] & b.d8[(int64_t)n * M + j]) != 0 ? 1 : 0;
        }
      } else {
        for (int n : act_n) {
          const float u = b.implicit && b.sto_round
                              ? uniform_at(b.seed, TAG_UPDATE_ROUND, 0, b.call, ((uint64_t)(b.n0 + n) * M + j) * K + i)
                              : 0.5f;
          ev[ne] = n;
          evc[ne] = pair_count(b, n, j, i, u);
          ne += evc[ne] > 0 ? 1 : 0;
        }
      }
      float w = wrow[i];
      for (int e = 0; e < ne; ++e) {
        const int64_t n = ev[e];
        const int count = u16_path ? __builtin_popcount(b.x8[n * K + i] & b.d8[n * M + j]) : evc[e];
        w = apply_pulses(par, crow[i], w, (b.xneg[n * K + i] ^ b.dneg[n * M + j]) ? 1 : -1, count, b.noisy, rn);
      }
      wrow[i] = w;
    }
  }
}

// In-place transpose of a 64x64 bit matrix: afterwards bit i of a[s] is the old bit s of a[i].
void transpose64(uint64_t a[64]) {
  uint64_t m = 0x00000000FFFFFFFFull;
  for (int j = 32; j != 0; j >>= 1, m ^= (m << j)) {
    for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k] ^= t << j;
      a[k | j] ^= t;
    }
  }
}

// Wide trains: per-slot lists of the input lines of every sample (in increasing i), from 64x64
// bit transposes of the trains.  ConstantStep uses them when they are cheaper than the dense
// popcount over all input lines (the work of the lists is about the number of coincidences,
// that of the dense loop the number of active (sample, row) pairs times K); both give the same
// counts.  Pulse by pulse every coincidence costs a pulse anyway, so the lists are always used.
void build_slot_lists(Batch &b, bool constant_step) {
  const int N = b.N, M = b.M, K = b.K;
  const int groups = (K + 63) / 64;
  b.slot_idx.assign(N, {});
  b.slot_off.assign((size_t)N * 129, 0);
  std::vector<int64_t> work_lists(N), work_dense(N);
  parallel_for(N, grain_for(N, 4, b.work), [&](int64_t nb, int64_t ne) {
    std::vector<uint64_t> T((size_t)groups * 64), negm(groups);
    for (int64_t n = nb; n < ne; ++n) {
      const uint64_t *x = b.x64.data() + n * K, *d = b.d64.data() + n * M;
      const uint8_t *xneg = b.xneg.data() + n * K;
      const int bits = std::min(std::max(b.scale(n).bl, 0), kMaxBits);
      int32_t *off = b.slot_off.data() + n * 129;
      int32_t cnt[128] = {0};
      for (int g = 0; g < groups; ++g) {
        uint64_t *a = T.data() + (size_t)g * 64;
        uint64_t nm = 0;
        for (int r = 0; r < 64; ++r) {
          const bool in = g * 64 + r < K;
          a[r] = in ? x[g * 64 + r] : 0;
          nm |= (uint64_t)(in && xneg[g * 64 + r] != 0) << r;
        }
        negm[g] = nm;
        transpose64(a);
        for (int s = 0; s < bits; ++s) {
          cnt[2 * s] += __builtin_popcountll(a[s] & ~nm);
          cnt[2 * s + 1] += __builtin_popcountll(a[s] & nm);
        }
      }
      off[0] = 0;
      for (int p = 0; p < 128; ++p) off[p + 1] = off[p] + cnt[p];
      std::vector<uint32_t> &list = b.slot_idx[n];
      list.resize((size_t)off[128]);
      for (int p = 0; p < 2 * bits; ++p) {
        int32_t pos = off[p];
        for (int g = 0; g < groups; ++g) {
          const uint64_t sel = (p & 1) ? negm[g] : ~negm[g];
          for (uint64_t v = T[(size_t)g * 64 + p / 2] & sel; v; v &= v - 1)
            list[(size_t)pos++] = (uint32_t)(g * 64 + __builtin_ctzll(v));
        }
      }
      int64_t dbits = 0, active_d = 0;
      for (int j = 0; j < M; ++j) {
        dbits += __builtin_popcountll(d[j]);
        active_d += d[j] != 0;
      }
      work_lists[n] = bits > 0 ? (int64_t)((double)off[128] * (double)dbits / bits) : 0;
      work_dense[n] = active_d * K;
    }
  });
  int64_t wl = 0, wd = 0;
  for (int n = 0; n < N; ++n) {
    wl += work_lists[n];
    wd += work_dense[n];
  }
  b.slot_lists = !constant_step || 2 * wl < wd;
}

}  // namespace

namespace {

// X or rows (exactly one is set).
void pulsed_update_impl(float *W, int M, int K, const float *X, const RowBlockFn *rows, const float *D, int N,
                        float lr, const UpdateParameters &up, const DeviceArray &dev, uint64_t seed, uint64_t call) {
  if (N <= 0 || lr == 0.0f) return;
  if (up.pulse_type == PulseType::None || dev.is_floating_point()) {
    if (X != nullptr) {
      exact_update(W, M, K, X, D, N, lr);
      return;
    }
    // (the sum in blocks of rows: exact up to float rounding)
    constexpr int64_t kExactRows = 16 * kRowBlock;
    std::vector<float> buf((size_t)kExactRows * K);
    for (int64_t n0 = 0; n0 < N; n0 += kExactRows) {
      const int64_t cnt = std::min<int64_t>(kExactRows, N - n0);
      parallel_for((cnt + kRowBlock - 1) / kRowBlock, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t bl = b0; bl < b1; ++bl) {
          const int64_t r = bl * kRowBlock;
          (*rows)(n0 + r, (int)std::min<int64_t>(kRowBlock, cnt - r), buf.data() + r * K);
        }
      });
      exact_update(W, M, K, buf.data(), D + n0 * M, (int)cnt, lr);
    }
    return;
  }
  const DeviceParameters &par = dev.par;
  const float dw_min = par.dw_min;

  // Per-sample scales (SPEC §2).  With fixed_bl one BL serves the whole batch.
  std::vector<float> xmax(N), dmax(N);
  // (small updates on the calling thread alone: threading.h, grain_for)
  const int64_t work = (int64_t)N * K * M;
  parallel_for(N, grain_for(N, 16, work), [&](int64_t nb, int64_t ne) {
    RowReader rr(X, rows, K, N);
    for (int64_t n = nb; n < ne; ++n) {
      float a = 0.0f, c = 0.0f;
      const float *x = rr.row(n);
      for (int i = 0; i < K; ++i) a = max_or(fabsf(x[i]), a);
      for (int j = 0; j < M; ++j) c = max_or(fabsf(D[n * M + j]), c);
      xmax[n] = a;
      dmax[n] = c;
    }
  });
  Batch b;
  b.work = work;
  b.sc.resize(N);
  int max_bl = 0;
  for (int n = 0; n < N; ++n) {
    b.sc[n] = pulse_scales(xmax[n], dmax[n], lr, dw_min, up, 0);
    max_bl = std::max(max_bl, b.sc[n].bl);
  }
  if (max_bl <= 0) return;
  if (up.fixed_bl && up.update_bl_management) {
    for (int n = 0; n < N; ++n)
      if (b.sc[n].bl > 0) b.sc[n] = pulse_scales(xmax[n], dmax[n], lr, dw_min, up, max_bl);
  }

  b.M = M;
  b.K = K;
  b.W = W;
  b.dev = &dev;
  b.seed = seed;
  b.call = call;
  b.implicit = up.pulse_type == PulseType::DeterministicImplicit;
  b.sto_round = up.sto_round;
  b.noisy = par.dw_min_std > 0.0f;
  b.sigma = par.dw_min_std;
  b.reach_fwd = 1.0f + kXiBound * fabsf(b.sigma);
  b.reach_back = max_or(kXiBound * fabsf(b.sigma) - 1.0f, 0.0f);
  b.max_bits = std::min(max_bl, kMaxBits);
  b.narrow = b.max_bits <= 8;
  const bool constant_step = par.type == DeviceType::ConstantStep;

  // Pulse by pulse, every row takes the samples in order, so the batch can go through phases 1
  // and 2 in chunks of samples (each row's cycle-to-cycle stream continuing from chunk to
  // chunk): the same result, with the per-sample arrays of one chunk in memory instead of the
  // whole batch's (a convolution's update has one sample per output position).  ConstantStep
  // counts over the whole batch first, so it takes the batch at once.
  const int64_t chunk =
      constant_step ? N : std::max<int64_t>(1, std::min<int64_t>(N, kChunkElements / std::max(K, M)));
  std::vector<RowNormals> row_normals;
  if (!constant_step) {
    const StreamKey c2c(seed, TAG_PULSE_C2C, kC2cRow, call);
    row_normals.reserve(M);
    for (int j = 0; j < M; ++j) row_normals.emplace_back(c2c, j);
    b.row_normals = row_normals.data();
  }
  const StreamKey xkey(seed, TAG_PULSE_X, 0, call), dkey(seed, TAG_PULSE_D, 0, call);
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    b.n0 = n0;
    b.N = (int)std::min<int64_t>(chunk, N - n0);

    // ---- phase 1: pulse trains / counts of every line ----
    const size_t NK = (size_t)b.N * K, NM = (size_t)b.N * M;
    b.xneg.resize(NK);
    b.dneg.resize(NM);
    if (b.implicit) {
      b.xc.resize(NK);
      b.dc.resize(NM);
    } else if (b.narrow) {
      b.x8.resize(NK);
      b.d8.resize(NM);
    } else {
      b.x64.resize(NK);
      b.d64.resize(NM);
    }
    if (!constant_step) {
      b.xact.resize(NK);
      b.nxact.resize(b.N);
    }
    parallel_for(b.N, grain_for(b.N, 1, work), [&](int64_t nb, int64_t ne) {
      TrainScratch ts;
      RowReader rr(X, rows, K, N);
      for (int64_t n = nb; n < ne; ++n) {  // (n: place in the chunk)
        const PulseScales &s = b.scale(n);
        const float *x = rr.row(n0 + n), *d = D + (n0 + n) * M;
        uint8_t *xneg = b.xneg.data() + n * K, *dneg = b.dneg.data() + n * M;
        if (b.implicit) {
          float *xc = b.xc.data() + n * K, *dc = b.dc.data() + n * M;
          for (int i = 0; i < K; ++i) {
            xneg[i] = x[i] > 0.0f ? 0 : 0xFF;
            xc[i] = s.bl > 0 ? std::round(min_or(s.x_scale * fabsf(x[i]), 1.0f) * s.bl) : 0.0f;
          }
          for (int j = 0; j < M; ++j) {
            dneg[j] = d[j] > 0.0f ? 0 : 0xFF;
            dc[j] = s.bl > 0 ? std::round(min_or(s.d_scale * fabsf(d[j]), 1.0f) * s.bl) : 0.0f;
          }
        } else {
          const int bits = std::min(s.bl, kMaxBits);
          make_trains(x, K, s.x_scale, bits, xkey, (uint64_t)(n0 + n), b.narrow ? b.x8.data() + n * K : nullptr,
                      b.narrow ? nullptr : b.x64.data() + n * K, xneg, ts);
          make_trains(d, M, s.d_scale, bits, dkey, (uint64_t)(n0 + n), b.narrow ? b.d8.data() + n * M : nullptr,
                      b.narrow ? nullptr : b.d64.data() + n * M, dneg, ts);
        }
        if (!constant_step) {
          int *act = b.xact.data() + n * K;
          int na = 0;
          for (int i = 0; i < K; ++i) {
            const bool a = b.implicit ? b.xc[n * K + i] > 0.0f : b.xtrain(n * K + i) != 0;
            act[na] = i;
            na += a ? 1 : 0;
          }
          b.nxact[n] = na;
        }
      }
    });

    // ---- phase 2: coincidences, row by row ----
    if (!b.implicit && !b.narrow) build_slot_lists(b, constant_step);

    parallel_for(M, grain_for(M, 4, work), [&](int64_t jb, int64_t je) {
      if (constant_step) rows_constant_step(b, jb, je);
      else rows_pulse_by_pulse(b, jb, je);
    });
  }
}

}  // namespace

void pulsed_update(float *W, int M, int K, const float *X, const float *D, int N, float lr,
                   const UpdateParameters &up, const DeviceArray &dev, uint64_t seed, uint64_t call) {
  pulsed_update_impl(W, M, K, X, nullptr, D, N, lr, up, dev, seed, call);
}

void pulsed_update(float *W, int M, int K, const RowBlockFn &rows, const float *D, int N, float lr,
                   const UpdateParameters &up, const DeviceArray &dev, uint64_t seed, uint64_t call) {
  pulsed_update_impl(W, M, K, nullptr, &rows, D, N, lr, up, dev, seed, call);
}

}  // namespace rpu
