// Bindings of rpucuda's CUDA twins (aihw_deploy.simulator.rpu_base.cuda).
//
// Device memory is exchanged as raw pointers (ints from torch.Tensor.data_ptr()) with the
// stream (torch.cuda.current_stream().cuda_stream) and the device index; the Python adapter
// (aihw_deploy/simulator/cuda.py) checks dtype, device, contiguity and shapes before calling.
// Here: parameter validation, sizes, and the GIL released while the GPU work is queued.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "inference_noise.h"
#include "parameters.h"

#ifdef RPU_WITH_CUDA
#include "rpucuda_cuda.h"
#endif

namespace py = pybind11;
using namespace rpu;

#ifdef RPU_WITH_CUDA
namespace {

float *fptr(uintptr_t p) { return reinterpret_cast<float *>(p); }
cuda::Stream sptr(uintptr_t s) { return reinterpret_cast<cuda::Stream>(s); }

void check_valid(const std::string &msg, const char *what) {
  if (!msg.empty()) throw py::value_error(std::string(what) + ": " + msg);
}

void check_dims(const char *fn, std::initializer_list<std::pair<const char *, int64_t>> dims) {
  for (auto &d : dims)
    if (d.second <= 0 || d.second > INT32_MAX)
      throw py::value_error(std::string(fn) + ": " + d.first + " must be in 1 .. 2^31-1, got " +
                            std::to_string(d.second));
}

void check_ptr(const char *fn, const char *name, uintptr_t p) {
  if (p == 0) throw py::value_error(std::string(fn) + ": " + name + " is a null pointer");
}

void check_time(double t) {
  if (!std::isfinite(t) || t < 0)
    throw py::value_error("t_inference: must be a finite number of seconds >= 0, got " + std::to_string(t));
}

cuda::ProgrammedView view(int M, int K, float scale, uintptr_t gp, uintptr_t gm, uintptr_t np_, uintptr_t nm) {
  cuda::ProgrammedView v;
  v.M = M;
  v.K = K;
  v.scale = scale;
  v.g_plus = fptr(gp);
  v.g_minus = fptr(gm);
  v.nu_plus = fptr(np_);
  v.nu_minus = fptr(nm);
  return v;
}

// Runs f with the GIL released on `device`.
template <typename F>
auto on_device(int device, F &&f) {
  py::gil_scoped_release nogil;
  cuda::set_device(device);
  return f();
}

}  // namespace
#endif

void bind_cuda(py::module_ &m) {
#ifdef RPU_WITH_CUDA
  m.def("is_compiled", []() { return true; }, "True when rpucuda was built with CUDA kernels.");
  m.def("device_count", &cuda::device_count, "GPUs visible to rpucuda's CUDA runtime (0 without driver/GPU).");
  m.def("blas_backend", []() { return std::string(cuda::blas_backend()); },
        "Dense-product backend: 'cublas (libcublas.so.N)' or 'rpucuda kernel'.");

  m.def("io_mvm", [](uintptr_t w, int64_t M, int64_t K, bool transposed, uintptr_t x, int64_t N, uintptr_t y,
                     const IOParameters &io, const MappingParameter &map, bool bound_management, uintptr_t alpha,
                     int64_t n_alpha, uint64_t seed, uint64_t call, uintptr_t stream, int device) {
          check_valid(validate(io), "io");
          check_valid(validate(map), "mapping");
          check_dims("io_mvm", {{"M", M}, {"K", K}});
          if (N <= 0) return;
          check_ptr("io_mvm", "weights", w);
          check_ptr("io_mvm", "x", x);
          check_ptr("io_mvm", "out", y);
          const int64_t outn = transposed ? K : M;
          if (alpha && n_alpha != 1 && n_alpha != outn)
            throw py::value_error("io_mvm: alpha must have 1 or " + std::to_string(outn) + " values, got " +
                                  std::to_string(n_alpha));
          on_device(device, [&] {
            cuda::io_mvm(fptr(w), (int)M, (int)K, transposed, fptr(x), (int)N, fptr(y), io, map, bound_management,
                         alpha ? fptr(alpha) : nullptr, alpha ? (int)n_alpha : 0, MVMCall{seed, call}, sptr(stream));
          });
        },
        py::arg("weights"), py::arg("M"), py::arg("K"), py::arg("transposed"), py::arg("x"), py::arg("N"),
        py::arg("out"), py::arg("io"), py::arg("mapping"), py::arg("bound_management"), py::arg("alpha"),
        py::arg("n_alpha"), py::arg("seed"), py::arg("call"), py::arg("stream"), py::arg("device"),
        "The analog MVM of SPEC §1 on the GPU (device pointers): weights [M, K], x [N, in] -> out [N, out].");

  m.def("exact_update", [](uintptr_t w, int64_t M, int64_t K, uintptr_t x, uintptr_t d, int64_t N, float lr,
                           uintptr_t stream, int device) {
          check_dims("exact_update", {{"M", M}, {"K", K}});
          if (N <= 0) return;
          on_device(device, [&] {
            cuda::exact_update(fptr(w), (int)M, (int)K, fptr(x), fptr(d), (int)N, lr, sptr(stream));
          });
        },
        py::arg("weights"), py::arg("M"), py::arg("K"), py::arg("x"), py::arg("d"), py::arg("N"), py::arg("lr"),
        py::arg("stream"), py::arg("device"), "W -= lr * d^T x on the GPU.");

  m.def("pulsed_update", [](uintptr_t w, int64_t M, int64_t K, uintptr_t x, uintptr_t d, int64_t N, float lr,
                            const UpdateParameters &up, const DeviceParameters &dev, uintptr_t cells, uint64_t seed,
                            uint64_t call, uintptr_t stream, int device) {
          check_valid(validate(up), "update");
          check_valid(validate(dev), "device");
          check_dims("pulsed_update", {{"M", M}, {"K", K}});
          if (N <= 0) return;
          check_ptr("pulsed_update", "device_arrays", cells);
          on_device(device, [&] {
            cuda::pulsed_update(fptr(w), (int)M, (int)K, fptr(x), fptr(d), (int)N, lr, up, dev,
                                reinterpret_cast<const DeviceCell *>(cells), seed, call, sptr(stream));
          });
        },
        py::arg("weights"), py::arg("M"), py::arg("K"), py::arg("x"), py::arg("d"), py::arg("N"), py::arg("lr"),
        py::arg("update"), py::arg("device_parameters"), py::arg("device_arrays"), py::arg("seed"), py::arg("call"),
        py::arg("stream"), py::arg("device"),
        "Pulsed update (SPEC §2) on the GPU; device_arrays: [M, K, 6] DeviceCell values.");

  m.def("pcm_program", [](uintptr_t w, int64_t M, int64_t K, const PCMNoiseParameters &p, uint64_t seed,
                          uintptr_t gp, uintptr_t gm, uintptr_t np_, uintptr_t nm, uintptr_t stream, int device) {
          check_valid(validate(p), "noise_model");
          check_dims("pcm_program", {{"M", M}, {"K", K}});
          cuda::ProgrammedView v = view((int)M, (int)K, 1.0f, gp, gm, np_, nm);
          return on_device(device, [&] { return cuda::pcm_program(fptr(w), (int)M, (int)K, p, seed, v, sptr(stream)); });
        },
        py::arg("weights"), py::arg("M"), py::arg("K"), py::arg("noise_model"), py::arg("seed"), py::arg("g_plus"),
        py::arg("g_minus"), py::arg("nu_plus"), py::arg("nu_minus"), py::arg("stream"), py::arg("device"),
        "Programs weights [M, K] on the GPU (SPEC §4.1-4.2); returns the scale (µS per weight unit).");

  m.def("pcm_weights_at", [](int64_t M, int64_t K, float scale, uintptr_t gp, uintptr_t gm, uintptr_t np_,
                             uintptr_t nm, const PCMNoiseParameters &p, double t, uint64_t seed, uint64_t call,
                             uintptr_t w_out, uintptr_t stream, int device) {
          check_time(t);
          check_dims("pcm_weights_at", {{"M", M}, {"K", K}});
          cuda::ProgrammedView v = view((int)M, (int)K, scale, gp, gm, np_, nm);
          on_device(device, [&] { cuda::pcm_weights_at(v, p, t, seed, call, fptr(w_out), sptr(stream)); });
        },
        py::arg("M"), py::arg("K"), py::arg("scale"), py::arg("g_plus"), py::arg("g_minus"), py::arg("nu_plus"),
        py::arg("nu_minus"), py::arg("noise_model"), py::arg("t_inference"), py::arg("seed"), py::arg("call"),
        py::arg("out"), py::arg("stream"), py::arg("device"));

  m.def("chip_reference", [](int64_t M, int64_t K, float scale, uintptr_t gp, uintptr_t gm, uintptr_t np_,
                             uintptr_t nm, const PCMNoiseParameters &p, uint64_t program_seed, const IOParameters &io,
                             const MappingParameter &map, DriftCompensationType type, uint64_t tile_seed,
                             uintptr_t ref, uintptr_t stream, int device) {
          check_valid(validate(io), "io");
          check_dims("chip_reference", {{"M", M}, {"K", K}});
          cuda::ProgrammedView v = view((int)M, (int)K, scale, gp, gm, np_, nm);
          on_device(device, [&] {
            cuda::chip_reference(v, p, program_seed, io, map, type, tile_seed, fptr(ref), sptr(stream));
          });
        },
        py::arg("M"), py::arg("K"), py::arg("scale"), py::arg("g_plus"), py::arg("g_minus"), py::arg("nu_plus"),
        py::arg("nu_minus"), py::arg("noise_model"), py::arg("program_seed"), py::arg("io"), py::arg("mapping"),
        py::arg("type"), py::arg("tile_seed"), py::arg("ref"), py::arg("stream"), py::arg("device"));

  m.def("chip_at", [](int64_t M, int64_t K, float scale, uintptr_t gp, uintptr_t gm, uintptr_t np_, uintptr_t nm,
                      const PCMNoiseParameters &p, double t, uint64_t program_seed, const IOParameters &io,
                      const MappingParameter &map, DriftCompensationType type, uint64_t tile_seed, uintptr_t ref,
                      uintptr_t w_out, uintptr_t alpha, uintptr_t stream, int device) {
          check_time(t);
          check_valid(validate(io), "io");
          check_dims("chip_at", {{"M", M}, {"K", K}});
          cuda::ProgrammedView v = view((int)M, (int)K, scale, gp, gm, np_, nm);
          on_device(device, [&] {
            cuda::chip_at(v, p, t, program_seed, io, map, type, tile_seed, fptr(ref), fptr(w_out), fptr(alpha),
                          sptr(stream));
          });
        },
        py::arg("M"), py::arg("K"), py::arg("scale"), py::arg("g_plus"), py::arg("g_minus"), py::arg("nu_plus"),
        py::arg("nu_minus"), py::arg("noise_model"), py::arg("t_inference"), py::arg("program_seed"), py::arg("io"),
        py::arg("mapping"), py::arg("type"), py::arg("tile_seed"), py::arg("ref"), py::arg("out"), py::arg("alpha"),
        py::arg("stream"), py::arg("device"));
#else
  m.def("is_compiled", []() { return false; }, "True when rpucuda was built with CUDA kernels.");
  m.def("device_count", []() { return 0; }, "GPUs visible to rpucuda (always 0 in a CPU-only build).");
#endif
}
