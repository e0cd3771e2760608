// Public API of rpucuda's CUDA twins (rpucuda/cuda/*.cu).  Same physics, same parameter structs
// and the same Philox streams as the CPU functions of the same name (rpucuda/*.h); every pointer
// argument is a *device* pointer (float32, row-major, contiguous) unless it says host, and work
// is launched on the caller's stream (`Stream` is a cudaStream_t; nullptr = the legacy default
// stream).  This header includes no CUDA header, so adapters (pybind11, onnxruntime) compile
// without nvcc; the functions exist only in builds with RPU_WITH_CUDA defined.
//
// Errors (a failed launch, an out-of-memory, no device) throw std::runtime_error with the CUDA
// message and the rpucuda function that failed.
//
// Agreement with the CPU (what the parity tests check):
//  * random numbers: bit-identical (rng.h is shared and the .cu files are compiled with
//    --fmad=false, so Box-Muller and quantization round exactly as on the CPU);
//  * dense products: cuBLAS (or rpucuda's own kernel when cuBLAS cannot be loaded) sums in a
//    different order than rpucuda/analog_gemm.cpp, so products agree to float rounding, and an
//    output that lies within rounding of an ADC threshold may land one ADC step away;
//  * pulse trains of the pulsed update: identical (same Philox values, same slot layout), so the
//    coincidence counts are identical; the cycle-to-cycle noise of pulse-by-pulse updates uses a
//    per-cross-point stream on CUDA (the CPU uses a per-row sequential stream), so those agree
//    in distribution (exactly when dw_min_std = 0).
#pragma once
#include <cstddef>
#include <cstdint>

#include "device_step.h"
#include "inference_noise.h"
#include "io_pipeline.h"
#include "parameters.h"

namespace rpu {
namespace cuda {

using Stream = void *;  // cudaStream_t

// ---- runtime (blas.cu) ------------------------------------------------------------------------
int device_count();                 // 0 when there is no driver or no GPU (never throws)
void set_device(int device);        // cudaSetDevice for the calling thread
int current_device();
int pointer_device(const void *p);  // the device of a device pointer; -1 for host memory
void stream_synchronize(Stream s);
void *device_malloc(size_t bytes);  // cudaMalloc (throws on failure); device_free(nullptr) is a no-op
void device_free(void *p);
void copy_to_device(void *dst, const void *host_src, size_t bytes, Stream s);  // returns when copied
void copy_to_host(void *host_dst, const void *src, size_t bytes, Stream s);    // waits for the stream
void copy_device(void *dst, const void *src, size_t bytes, Stream s);          // async on s
// Which dense-product backend is in use: "cublas (libcublas.so.N)" or "rpucuda kernel".
const char *blas_backend();

// Row-major C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C (the twin of rpu::sgemm).
void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A, int lda, const float *B,
           int ldb, float beta, float *C, int ldc, Stream s);

// ---- IO pipeline (io_pipeline.cu): the twin of rpu::io_mvm ---------------------------------------
// W [M, K]; X [N, in]; Y [N, out] (in/out = K/M, or M/K when transposed); alpha nullptr or a
// device array of n_alpha = 1 or out values.
void io_mvm(const float *W, int M, int K, bool transposed, const float *X, int N, float *Y, const IOParameters &io,
            const MappingParameter &map, bool bound_management, const float *alpha, int n_alpha, const MVMCall &rng,
            Stream s);

// ---- update (pulsed_update.cu) ------------------------------------------------------------------
// W -= lr * D^T X exactly (cuBLAS).  X [N, K], D [N, M].
void exact_update(float *W, int M, int K, const float *X, const float *D, int N, float lr, Stream s);
// The twin of rpu::pulsed_update: `cells` is the device copy of DeviceArray::cells (M*K
// DeviceCell, row-major), `dev` the array's tile-wise parameters (DeviceArray::par).
void pulsed_update(float *W, int M, int K, const float *X, const float *D, int N, float lr, const UpdateParameters &up,
                   const DeviceParameters &dev, const DeviceCell *cells, uint64_t seed, uint64_t call, Stream s);

// ---- inference (inference_noise.cu) ----------------------------------------------------------------
// A programmed chip held in device memory (the twin of ProgrammedWeights); buffers are owned by
// the caller, M*K floats each.
struct ProgrammedView {
  int M = 0, K = 0;
  float scale = 1.0f;  // µS per weight unit (host value)
  float *g_plus = nullptr, *g_minus = nullptr, *nu_plus = nullptr, *nu_minus = nullptr;
};
// Programs W [M, K] (the twin of rpu::pcm_program): fills the four arrays of `out` and returns
// the scale (also stored in out.scale); waits for the stream (the scale is needed on the host).
float pcm_program(const float *W, int M, int K, const PCMNoiseParameters &p, uint64_t seed, ProgrammedView &out,
                  Stream s);
void pcm_weights_at(const ProgrammedView &pw, const PCMNoiseParameters &p, double t_inference, uint64_t seed,
                    uint64_t call, float *W_out, Stream s);
void pcm_programmed_weights(const ProgrammedView &pw, float *W_out, Stream s);
// ref_out: device array (1 value for Global, M for PerColumn).
void drift_readout(const float *W, int M, int K, const IOParameters &io, const MappingParameter &map,
                   DriftCompensationType type, const MVMCall &rng, float *ref_out, Stream s);
// The chip conventions of rpu::chip_reference / rpu::chip_at (inference_noise.h), on the device.
void chip_reference(const ProgrammedView &pw, const PCMNoiseParameters &p, uint64_t program_seed,
                    const IOParameters &io, const MappingParameter &map, DriftCompensationType type,
                    uint64_t tile_seed, float *ref_out, Stream s);
void chip_at(const ProgrammedView &pw, const PCMNoiseParameters &p, double t_inference, uint64_t program_seed,
             const IOParameters &io, const MappingParameter &map, DriftCompensationType type, uint64_t tile_seed,
             const float *ref, float *W_out, float *alpha_out, Stream s);

// ---- layout and input checks of the onnxruntime adapters (im2col.cu, nonfinite.cu) -------------
// A convolution with 1 to 3 spatial dimensions, padded to 3 (leading dimensions of size 1): input
// size S, kernel size K, stride, padding on each side, dilation, output size L.  (Named apart
// from rpu::ConvShape of rpucuda/im2col.h, which these functions could take once it is settled.)
struct Im2colShape {
  int64_t S[3] = {1, 1, 1}, K[3] = {1, 1, 1}, stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0}, dil[3] = {1, 1, 1},
          L[3] = {1, 1, 1};
};
// Channels [c0, c0 + Cg) of X [N, C, S0, S1, S2] unfolded into cols [N*L0*L1*L2, Cg*K0*K1*K2]:
// row (n, l0, l1, l2), column (c, k0, k1, k2) -- the order of aihw_deploy.nn.modules.conv.im2col;
// 0 where the window lies in the padding.
void im2col(const float *X, int64_t N, int64_t C, int64_t c0, int64_t Cg, const Im2colShape &shape, float *cols,
            Stream s);
// Y[n, m0 + m, l] = rows[n*L + l, m] + (bias ? bias[m0 + m] : 0) for m < Mg, with Y [N, M, L].
void rows_to_channels(const float *rows, int64_t N, int64_t L, int64_t Mg, int64_t M, int64_t m0, const float *bias,
                      float *Y, Stream s);
// Y[r, m] += bias[m] for Y [rows, M] (nothing when bias is nullptr).
void add_bias(float *Y, int64_t rows, int64_t M, const float *bias, Stream s);
// 0 if the n values of x are all finite, 1 if some value is NaN, 2 if some is +-Inf (and none is
// NaN); waits for the stream.
int nonfinite_kind(const float *x, int64_t n, Stream s);

}  // namespace cuda
}  // namespace rpu
