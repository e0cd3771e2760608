// The per-element index math of the layout kernels (im2col.cu) and of the NaN/Inf check
// (nonfinite.cu) as RPU_HD functions: the CUDA kernels run one element per thread, and
// tests/cpp/ort_cuda_layout_emulation.cpp plays them on the host against
// aihw_deploy.nn.modules.conv.im2col (tests/test_ort_cuda.py), so the index layout is tested
// without a GPU.
#pragma once
#include <cstdint>
#include <cstring>

#include "rng.h"  // RPU_HD
#include "rpucuda_cuda.h"

namespace rpu {
namespace cuda {
namespace layout {

// Element i of cols [N*Lt, Kg] (Lt = L0*L1*L2, Kg = Cg*K0*K1*K2) of channels [c0, c0 + Cg) of
// X [N, C, S0, S1, S2]: row (n, l0, l1, l2), column (c, k0, k1, k2), 0 in the padding.
RPU_HD float im2col_element(const float *X, int64_t C, int64_t c0, const Im2colShape &sh, int64_t Lt, int64_t Kg,
                            int64_t i) {
  const int64_t r = i / Kg, q = i % Kg;
  const int64_t n = r / Lt, l = r % Lt;
  const int64_t o0 = l / (sh.L[1] * sh.L[2]), o1 = (l / sh.L[2]) % sh.L[1], o2 = l % sh.L[2];
  const int64_t k2 = q % sh.K[2], k1 = (q / sh.K[2]) % sh.K[1], k0 = (q / (sh.K[1] * sh.K[2])) % sh.K[0];
  const int64_t c = q / (sh.K[0] * sh.K[1] * sh.K[2]);
  const int64_t i0 = o0 * sh.stride[0] - sh.pad[0] + k0 * sh.dil[0];
  const int64_t i1 = o1 * sh.stride[1] - sh.pad[1] + k1 * sh.dil[1];
  const int64_t i2 = o2 * sh.stride[2] - sh.pad[2] + k2 * sh.dil[2];
  if (i0 < 0 || i0 >= sh.S[0] || i1 < 0 || i1 >= sh.S[1] || i2 < 0 || i2 >= sh.S[2]) return 0.0f;
  const int64_t St = sh.S[0] * sh.S[1] * sh.S[2];
  return X[(n * C + c0 + c) * St + (i0 * sh.S[1] + i1) * sh.S[2] + i2];
}

// Element i, in (n, m, l) order, of output channels [m0, m0 + Mg) of Y [N, M, L]: its index in Y
// (*y) and value rows[n*L + l, m] + (bias ? bias[m0 + m] : 0) (the CPU adapter adds 0.0f too).
RPU_HD float rows_to_channels_element(const float *rows, int64_t L, int64_t Mg, int64_t M, int64_t m0,
                                      const float *bias, int64_t i, int64_t *y) {
  const int64_t l = i % L, m = (i / L) % Mg, n = i / (L * Mg);
  *y = (n * M + m0 + m) * L + l;
  return rows[(n * L + l) * Mg + m] + (bias ? bias[m0 + m] : 0.0f);
}

// 1 for a NaN, 2 for +-Inf, 0 for a finite value (from the bits: no float compare).
RPU_HD int nonfinite_flag(float v) {
#if defined(__CUDA_ARCH__)
  const uint32_t u = __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
#endif
  if ((u & 0x7f800000u) != 0x7f800000u) return 0;
  return (u & 0x007fffffu) ? 1 : 2;
}

}  // namespace layout
}  // namespace cuda
}  // namespace rpu
