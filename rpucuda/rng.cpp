#include "rng.h"

#include <algorithm>
#include <cstring>

namespace rpu {
namespace {

constexpr int kLanes = 64;  // blocks per vectorized batch

// 4 words for blocks b0 .. b0+n-1 (n <= kLanes, no carry into the high word inside a batch).
void philox_lanes(uint32_t c0_start, int n, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                  uint32_t (*w)[kLanes]) {
#pragma omp simd
  for (int l = 0; l < n; ++l) {
    Philox4 b = philox4x32_10(c0_start + (uint32_t)l, c1, c2, c3, k0, k1);
    w[0][l] = b.v[0];
    w[1][l] = b.v[1];
    w[2][l] = b.v[2];
    w[3][l] = b.v[3];
  }
}

template <bool kNormal>
void fill_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call, uint64_t base) {
  const uint32_t c3 = (tag << 24) | ((sub & 0xFFu) << 16) | (uint32_t)((call >> 32) & 0xFFFFu);
  const uint32_t c2 = (uint32_t)call, k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  uint32_t w[4][kLanes];
  float tmp[4 * kLanes];
  int64_t done = 0;
  uint64_t block = base >> 2;
  while (done < L) {
    int n = (int)std::min<int64_t>(kLanes, (L - done + 3) / 4);
    // keep the low counter word from wrapping inside one batch
    uint64_t room = 0x100000000ull - (block & 0xFFFFFFFFull);
    if ((uint64_t)n > room) n = (int)room;
    philox_lanes((uint32_t)block, n, (uint32_t)(block >> 32), c2, c3, k0, k1, w);
    if (kNormal) {
#pragma omp simd
      for (int l = 0; l < n; ++l) {
        float r0 = sqrtf(-2.0f * rpu_log(u01(w[0][l])));
        float r1 = sqrtf(-2.0f * rpu_log(u01(w[2][l])));
        float c0, s0, c1, s1;
        rpu_sincos_2pi(u01(w[1][l]), c0, s0);
        rpu_sincos_2pi(u01(w[3][l]), c1, s1);
        tmp[4 * l + 0] = r0 * c0;
        tmp[4 * l + 1] = r0 * s0;
        tmp[4 * l + 2] = r1 * c1;
        tmp[4 * l + 3] = r1 * s1;
      }
    } else {
#pragma omp simd
      for (int l = 0; l < n; ++l) {
        tmp[4 * l + 0] = u01(w[0][l]);
        tmp[4 * l + 1] = u01(w[1][l]);
        tmp[4 * l + 2] = u01(w[2][l]);
        tmp[4 * l + 3] = u01(w[3][l]);
      }
    }
    int64_t take = std::min<int64_t>(4 * (int64_t)n, L - done);
    std::memcpy(out + done, tmp, sizeof(float) * take);
    done += take;
    block += n;
  }
}

}  // namespace

void fill_normal_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call,
                      uint64_t base) {
  fill_bulk<true>(out, L, seed, tag, sub, call, base);
}

void fill_uniform_bulk(float *out, int64_t L, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call,
                       uint64_t base) {
  fill_bulk<false>(out, L, seed, tag, sub, call, base);
}

}  // namespace rpu
