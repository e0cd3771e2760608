// Bindings of the inference noise model (aihw_deploy.simulator.rpu_base.inference).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>

#include "buffers.h"
#include "inference_noise.h"

namespace py = pybind11;
using namespace rpu;
using aihw::as_float_buffer;
using aihw::FloatBuf;

void bind_inference(py::module_ &m) {
  py::enum_<DriftCompensationType>(m, "DriftCompensationType")
      .value("NONE", DriftCompensationType::None)
      .value("GLOBAL", DriftCompensationType::Global)
      .value("PER_COLUMN", DriftCompensationType::PerColumn);

  py::class_<PCMNoiseParameters>(m, "PCMNoiseParameters")
      .def(py::init<>())
      .def_property("prog_coeff",
                    [](const PCMNoiseParameters &p) { return std::vector<float>(p.prog_coeff, p.prog_coeff + 3); },
                    [](PCMNoiseParameters &p, const std::vector<float> &v) {
                      if (v.size() != 3) throw py::value_error("prog_coeff: expected 3 coefficients, got " + std::to_string(v.size()));
                      for (int i = 0; i < 3; ++i) p.prog_coeff[i] = v[i];
                    })
      .def_readwrite("g_max", &PCMNoiseParameters::g_max)
      .def_readwrite("g_min", &PCMNoiseParameters::g_min)
      .def_readwrite("t_0", &PCMNoiseParameters::t_0)
      .def_readwrite("t_read", &PCMNoiseParameters::t_read)
      .def_readwrite("prog_noise_scale", &PCMNoiseParameters::prog_noise_scale)
      .def_readwrite("read_noise_scale", &PCMNoiseParameters::read_noise_scale)
      .def_readwrite("drift_scale", &PCMNoiseParameters::drift_scale)
      .def("validate", [](const PCMNoiseParameters &p) { return validate(p); });

  py::class_<ProgrammedWeights>(m, "ProgrammedWeights")
      .def(py::init<>())
      .def_readonly("M", &ProgrammedWeights::M)
      .def_readonly("K", &ProgrammedWeights::K)
      .def_readonly("scale", &ProgrammedWeights::scale)
      .def("get_state", [](const ProgrammedWeights &pw) {
             auto arr = [&](const std::vector<float> &v) {
               py::array_t<float> a({(py::ssize_t)pw.M, (py::ssize_t)pw.K});
               if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), sizeof(float) * v.size());
               return a;
             };
             py::dict d;
             d["scale"] = pw.scale;
             d["g_plus"] = arr(pw.g_plus);
             d["g_minus"] = arr(pw.g_minus);
             d["nu_plus"] = arr(pw.nu_plus);
             d["nu_minus"] = arr(pw.nu_minus);
             return d;
           }, "Programmed conductances (µS) and drift exponents, each [M, K].")
      .def("set_state", [](ProgrammedWeights &pw, py::dict d) {
             auto get = [&](const char *k) {
               FloatBuf b = as_float_buffer(d[k], k, false);
               if (b.shape.size() != 2) throw py::value_error(std::string(k) + ": expected a 2-D array");
               pw.M = (int)b.shape[0];
               pw.K = (int)b.shape[1];
               return std::vector<float>(b.ptr, b.ptr + b.numel());
             };
             pw.g_plus = get("g_plus");
             pw.g_minus = get("g_minus");
             pw.nu_plus = get("nu_plus");
             pw.nu_minus = get("nu_minus");
             pw.scale = d["scale"].cast<float>();
           }, py::arg("state"));

  m.def("pcm_program", [](py::object w, const PCMNoiseParameters &p, uint64_t seed) {
          std::string msg = validate(p);
          if (!msg.empty()) throw py::value_error("noise_model: " + msg);
          FloatBuf wb = as_float_buffer(w, "weights", false);
          if (wb.shape.size() != 2) throw py::value_error("weights: expected a 2-D matrix");
          for (int64_t i = 0; i < wb.numel(); ++i)
            if (!std::isfinite(wb.ptr[i])) throw py::value_error("weights: contain NaN or Inf");
          auto *pw = new ProgrammedWeights();
          {
            py::gil_scoped_release nogil;
            pcm_program(wb.ptr, (int)wb.shape[0], (int)wb.shape[1], p, seed, *pw);
          }
          return pw;
        }, py::arg("weights"), py::arg("noise_model"), py::arg("seed"),
        "Programs weights [M, K] onto PCM pairs (SPEC §4.1-4.2); same seed -> same chip.");
  m.def("pcm_weights_at", [](const ProgrammedWeights &pw, const PCMNoiseParameters &p, double t, uint64_t seed,
                             uint64_t call) {
          if (!std::isfinite(t) || t < 0) throw py::value_error("t_inference: must be a finite number of seconds >= 0, got " + std::to_string(t));
          py::array_t<float> out({(py::ssize_t)pw.M, (py::ssize_t)pw.K});
          float *o = out.mutable_data();
          {
            py::gil_scoped_release nogil;
            pcm_weights_at(pw, p, t, seed, call, o);
          }
          return out;
        }, py::arg("programmed"), py::arg("noise_model"), py::arg("t_inference"), py::arg("seed"), py::arg("call"),
        "Weights [M, K] after drift and read noise at t_inference seconds (SPEC §4.2).");
  m.def("pcm_programmed_weights", [](const ProgrammedWeights &pw) {
          py::array_t<float> out({(py::ssize_t)pw.M, (py::ssize_t)pw.K});
          pcm_programmed_weights(pw, out.mutable_data());
          return out;
        }, py::arg("programmed"));
  m.def("drift_readout", [](py::object w, const IOParameters &io, const MappingParameter &map,
                            DriftCompensationType type, uint64_t seed, uint64_t call) {
          FloatBuf wb = as_float_buffer(w, "weights", false);
          if (wb.shape.size() != 2) throw py::value_error("weights: expected a 2-D matrix");
          const int M = (int)wb.shape[0], K = (int)wb.shape[1];
          py::array_t<float> ref(type == DriftCompensationType::PerColumn ? M : 1);
          float *r = ref.mutable_data();
          {
            py::gil_scoped_release nogil;
            drift_readout(wb.ptr, M, K, io, map, type, MVMCall{seed, call}, r);
          }
          return ref;
        }, py::arg("weights"), py::arg("io"), py::arg("mapping"), py::arg("type"), py::arg("seed"), py::arg("call"),
        "SPEC §4.3 reference read-out: max(mean|y|, 1e-4) for one-hot inputs (1 or M values).");
  m.attr("CHIP_READOUT_SEED_XOR") = (uint64_t)kChipReadoutSeedXor;
  m.def("chip_reference", [](const ProgrammedWeights &pw, const PCMNoiseParameters &p, uint64_t program_seed,
                             const IOParameters &io, const MappingParameter &map, DriftCompensationType type,
                             uint64_t tile_seed) {
          py::array_t<float> ref(type == DriftCompensationType::PerColumn ? pw.M : 1);
          float *r = ref.mutable_data();
          r[0] = 1.0f;  // (None: no read-out; a neutral reference)
          {
            py::gil_scoped_release nogil;
            chip_reference(pw, p, program_seed, io, map, type, tile_seed, r);
          }
          return ref;
        }, py::arg("programmed"), py::arg("noise_model"), py::arg("program_seed"), py::arg("io"), py::arg("mapping"),
        py::arg("type"), py::arg("tile_seed"),
        "Drift-compensation reference of a freshly programmed chip (the convention shared with the "
        "onnxruntime kernel: read-out of the chip at t = 0, read-noise sample 0).");
  m.def("chip_at", [](const ProgrammedWeights &pw, const PCMNoiseParameters &p, double t, uint64_t program_seed,
                      const IOParameters &io, const MappingParameter &map, DriftCompensationType type,
                      uint64_t tile_seed, py::object ref) {
          if (!std::isfinite(t) || t < 0) throw py::value_error("t_inference: must be a finite number of seconds >= 0, got " + std::to_string(t));
          const size_t n = type == DriftCompensationType::PerColumn ? (size_t)pw.M : 1;
          FloatBuf rb = as_float_buffer(ref, "ref", false);
          if (type != DriftCompensationType::None && (size_t)rb.numel() != n)
            throw py::value_error("ref: expected " + std::to_string(n) + " values, got " + std::to_string(rb.numel()));
          py::array_t<float> w({(py::ssize_t)pw.M, (py::ssize_t)pw.K});
          py::array_t<float> alpha((py::ssize_t)n);
          float *wp = w.mutable_data(), *ap = alpha.mutable_data();
          ap[0] = 1.0f;  // (None: alpha stays 1)
          {
            py::gil_scoped_release nogil;
            chip_at(pw, p, t, program_seed, io, map, type, tile_seed, rb.ptr, wp, ap);
          }
          return py::make_tuple(w, alpha);
        }, py::arg("programmed"), py::arg("noise_model"), py::arg("t_inference"), py::arg("program_seed"),
        py::arg("io"), py::arg("mapping"), py::arg("type"), py::arg("tile_seed"), py::arg("ref"),
        "(weights [M, K], alpha) of the chip t_inference seconds after programming (read-noise sample 1; "
        "alpha = ref / read-out, 1 without compensation): the onnxruntime kernel's convention.");
}
