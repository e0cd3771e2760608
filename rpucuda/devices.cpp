#include "devices.h"

#include <algorithm>
#include <cmath>

#include "rng.h"
#include "threading.h"

namespace rpu {

namespace {
// Sub-stream of the construction draws, one per drawn quantity.
enum DtodDraw : uint32_t { D_DW = 0, D_WMAX, D_WMIN, D_UPDOWN, D_GUP, D_GDOWN, D_POW_G, D_POW_UD };
}

void DeviceArray::build(const DeviceParameters &p, int M_, int K_) {
  par = p;
  M = M_;
  K = K_;
  cells.resize((size_t)M * K);
  const uint64_t seed = p.construction_seed;
  parallel_for((int64_t)M * K, 4096, [&](int64_t b, int64_t e) {
    for (int64_t idx = b; idx < e; ++idx) {
      auto xi = [&](uint32_t which) { return normal_at(seed, TAG_DTOD, which, 0, (uint64_t)idx); };
      DeviceCell c;
      if (p.type == DeviceType::FloatingPoint) {
        c.dw_up = c.dw_down = p.dw_min;
        c.w_max = INFINITY;
        c.w_min = -INFINITY;
        c.g_up = c.g_down = 0.0f;
        cells[idx] = c;
        continue;
      }
      float dw = p.dw_min * (1.0f + p.dw_min_dtod * xi(D_DW));
      float wmax = p.w_max * (1.0f + p.w_max_dtod * xi(D_WMAX));
      float wmin = p.w_min * (1.0f + p.w_min_dtod * xi(D_WMIN));
      float ud = p.up_down + p.up_down_dtod * xi(D_UPDOWN);
      if (p.enforce_consistency) {
        dw = fabsf(dw);
        wmax = fmaxf(wmax, 0.0f);
        wmin = fminf(wmin, 0.0f);
      }
      c.dw_up = dw * (1.0f + ud);
      c.dw_down = dw * (1.0f - ud);
      if (p.enforce_consistency) {
        c.dw_up = fmaxf(c.dw_up, 0.0f);
        c.dw_down = fmaxf(c.dw_down, 0.0f);
      }
      c.w_max = wmax;
      c.w_min = wmin;
      switch (p.type) {
        case DeviceType::LinearStep:
          c.g_up = fabsf(p.gamma_up + p.gamma_up_dtod * xi(D_GUP));
          c.g_down = fabsf(p.gamma_down + p.gamma_down_dtod * xi(D_GDOWN));
          break;
        case DeviceType::SoftBounds:
          c.g_up = c.g_down = 1.0f;
          break;
        case DeviceType::PowStep: {
          float beta = p.pow_up_down + p.pow_up_down_dtod * xi(D_POW_UD);
          float g = p.pow_gamma_dtod * xi(D_POW_G);
          c.g_up = fmaxf(p.pow_gamma * (1.0f + beta + g), 0.0f);
          c.g_down = fmaxf(p.pow_gamma * (1.0f - beta + g), 0.0f);
          break;
        }
        default:
          c.g_up = c.g_down = 0.0f;
      }
      cells[idx] = c;
    }
  });
}

}  // namespace rpu
