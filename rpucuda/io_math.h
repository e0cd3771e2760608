// Element-wise math of the IO pipeline (SPEC §1), shared by the CPU code and its CUDA twin.
#pragma once
#include <cmath>

#include "parameters.h"
#include "rng.h"

namespace rpu {

// DAC/ADC: quantize to multiples of `step` (0 = no quantization) and clip to +-bound
// (bound <= 0 = no clipping).  Deterministic rounding is round-half-up; stochastic rounding
// rounds up with probability equal to the fractional part (u is uniform in (0,1)).
// floor() through an integer conversion (vectorizes without SSE4.1); |x| < 2^30.
RPU_HD float floor_small(float x) {
  float t = (float)(int)x;
  return t > x ? t - 1.0f : t;
}

// NaN stays NaN (a non-finite input or weight must not turn into a plausible finite value);
// the clamp before the integer conversion maps NaN to a finite value, so the conversion is
// always defined.
RPU_HD float quantize_clip(float v, float step, float bound, bool sto_round, float u) {
  const float v_in = v;
  if (step > 0.0f) {
    float q = v / step;
    q = q >= -1.0e9f ? q : -1.0e9f;
    q = q <= 1.0e9f ? q : 1.0e9f;
    q = floor_small(q + (sto_round ? u : 0.5f));
    v = q * step;
  }
  if (bound > 0.0f) v = v < -bound ? -bound : (v > bound ? bound : v);
  return v_in != v_in ? v_in : v;
}

// quantize_clip() with the cases known at compile time (kQuant: step > 0, kClip: bound > 0,
// kSto: stochastic rounding): the same operations in the same order, so the same values; the
// element loops of the pipeline use it because branch-free loop bodies vectorize.  kHwFloor
// uses floorf() (one instruction from SSE4.1 on) instead of floor_small(): the same value, as
// the argument is never -0 (it is q + 0.5 or q + u with u > 0) and |q| <= 1e9 after the clamp.
template <bool kQuant, bool kClip, bool kSto, bool kHwFloor = false>
RPU_HD float quantize_clip_t(float v, float step, float bound, float u) {
  const float v_in = v;
  if (kQuant) {
    float q = v / step;
    q = q >= -1.0e9f ? q : -1.0e9f;
    q = q <= 1.0e9f ? q : 1.0e9f;
    q = kHwFloor ? floorf(q + (kSto ? u : 0.5f)) : floor_small(q + (kSto ? u : 0.5f));
    v = q * step;
  }
  if (kClip) v = v < -bound ? -bound : (v > bound ? bound : v);
  return v_in != v_in ? v_in : v;
}

// Noise management (SPEC §1.3): the scale of one input vector from its max |x| (amax, NaN if
// the vector has a NaN) and its max x (mx); 0 for a zero vector (whose output is 0), NaN for a
// vector with a NaN.  kNM: the type known at compile time (branch-free element loops).
template <NoiseManagementType kNM>
RPU_HD float noise_scale_t(float amax, float mx, float nm_thres) {
  float sn;
  if (kNM == NoiseManagementType::None) {
    sn = 1.0f;
  } else if (kNM == NoiseManagementType::Max) {
    sn = mx > 0.0f ? mx : amax;
  } else if (kNM == NoiseManagementType::Constant) {
    sn = nm_thres > 0.0f ? nm_thres : 1.0f;
  } else {  // AbsMax, AverageAbsMax
    sn = amax;
    if (nm_thres > 0.0f && sn > nm_thres) sn = nm_thres;
  }
  return amax == 0.0f ? 0.0f : (amax != amax ? amax : sn);
}

// The same with the type known at run time.
RPU_HD float noise_scale_of(NoiseManagementType nm, float amax, float mx, float nm_thres) {
  switch (nm) {
    case NoiseManagementType::None: return noise_scale_t<NoiseManagementType::None>(amax, mx, nm_thres);
    case NoiseManagementType::Max: return noise_scale_t<NoiseManagementType::Max>(amax, mx, nm_thres);
    case NoiseManagementType::Constant: return noise_scale_t<NoiseManagementType::Constant>(amax, mx, nm_thres);
    default: return noise_scale_t<NoiseManagementType::AbsMax>(amax, mx, nm_thres);
  }
}

// Calls body.template run<kQuant, kClip>() for the case of (step, bound), so element loops are
// instantiated branch-free (used by the IO pipeline and the convolution pipeline).  Always
// inlined: the element loops must be compiled inside the caller's AVX2 / AVX-512 function; an
// out-of-line copy is compiled for the baseline ISA, where floorf() is a libm call per element
// (io_mvm's ADC then took a fifth of a 1024x1024 product).
#if defined(__GNUC__) && !defined(__CUDACC__)
#define RPU_QC_INLINE inline __attribute__((always_inline))
#else
#define RPU_QC_INLINE inline
#endif
template <typename Body>
RPU_QC_INLINE void dispatch_qc(float step, float bound, Body &body) {
  if (step > 0.0f) {
    if (bound > 0.0f) body.template run<true, true>();
    else body.template run<true, false>();
  } else {
    if (bound > 0.0f) body.template run<false, true>();
    else body.template run<false, false>();
  }
}

}  // namespace rpu
