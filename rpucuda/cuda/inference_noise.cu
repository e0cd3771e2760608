// The CUDA twins of the PCM inference model (rpucuda/inference_noise.cpp): programming, drift and
// read noise, the drift-compensation read-out and the chip conventions.  The kernels and their
// sequence live in inference_kernels.h (shared with the host emulation test); this file only
// launches them on the caller's stream.
#include "exec_cuda.cuh"
#include "inference_kernels.h"

namespace rpu {
namespace cuda {

float pcm_program(const float *W, int M, int K, const PCMNoiseParameters &p, uint64_t seed, ProgrammedView &out,
                  Stream s) {
  CudaExec ex(as_stream(s));
  return twin::pcm_program_run(ex, W, M, K, p, seed, out);
}

void pcm_weights_at(const ProgrammedView &pw, const PCMNoiseParameters &p, double t_inference, uint64_t seed,
                    uint64_t call, float *W_out, Stream s) {
  CudaExec ex(as_stream(s));
  twin::pcm_weights_at_run(ex, pw, p, t_inference, seed, call, W_out);
}

void pcm_programmed_weights(const ProgrammedView &pw, float *W_out, Stream s) {
  CudaExec ex(as_stream(s));
  twin::pcm_programmed_weights_run(ex, pw, W_out);
}

void drift_readout(const float *W, int M, int K, const IOParameters &io, const MappingParameter &map,
                   DriftCompensationType type, const MVMCall &rng, float *ref_out, Stream s) {
  CudaExec ex(as_stream(s));
  twin::drift_readout_run(ex, W, M, K, io, map, type, rng, ref_out);
}

void chip_reference(const ProgrammedView &pw, const PCMNoiseParameters &p, uint64_t program_seed,
                    const IOParameters &io, const MappingParameter &map, DriftCompensationType type,
                    uint64_t tile_seed, float *ref_out, Stream s) {
  CudaExec ex(as_stream(s));
  twin::chip_reference_run(ex, pw, p, program_seed, io, map, type, tile_seed, ref_out);
}

void chip_at(const ProgrammedView &pw, const PCMNoiseParameters &p, double t_inference, uint64_t program_seed,
             const IOParameters &io, const MappingParameter &map, DriftCompensationType type, uint64_t tile_seed,
             const float *ref, float *W_out, float *alpha_out, Stream s) {
  CudaExec ex(as_stream(s));
  twin::chip_at_run(ex, pw, p, t_inference, program_seed, io, map, type, tile_seed, ref, W_out, alpha_out);
}

}  // namespace cuda
}  // namespace rpu
