// Bindings of the tiles (aihw_deploy.simulator.rpu_base.tiles).  Tensors/arrays are used in
// place (no copy); the GIL is released while rpucuda computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>

#include "buffers.h"
#include "io_pipeline.h"
#include "tile.h"

namespace py = pybind11;
using namespace rpu;
using aihw::as_float_buffer;
using aihw::expect_2d;
using aihw::FloatBuf;

namespace {

void check_valid(const std::string &msg, const char *what) {
  if (!msg.empty()) throw py::value_error(std::string(what) + ": " + msg);
}

void check_sizes(int out_size, int in_size) {
  if (out_size <= 0) throw py::value_error("out_size must be positive, got " + std::to_string(out_size));
  if (in_size <= 0) throw py::value_error("in_size must be positive, got " + std::to_string(in_size));
}

// Output buffer: the given one (checked) or a new numpy array.
py::object output_or_new(py::object out, const char *name, int64_t rows, int64_t cols, float **ptr) {
  if (out.is_none()) {
    py::array_t<float> a = aihw::new_array(rows, cols);
    *ptr = a.mutable_data();
    return std::move(a);
  }
  FloatBuf b = as_float_buffer(out, name, true);
  expect_2d(b, name, rows, cols);
  *ptr = b.ptr;
  return out;
}

std::vector<float> finite_weights(py::object w, int M, int K) {
  FloatBuf b = as_float_buffer(w, "weights", false);
  expect_2d(b, "weights", M, K);
  std::vector<float> v(b.ptr, b.ptr + (size_t)M * K);
  for (float x : v)
    if (!std::isfinite(x)) throw py::value_error("weights: contain NaN or Inf");
  return v;
}

// The pulsed update turns every input into pulse probabilities: a NaN or Inf would fire
// arbitrary pulses (silently corrupting the devices), so it is rejected.
void check_finite(const FloatBuf &b, const char *name) {
  const int64_t n = b.numel();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(b.ptr[i])) throw py::value_error(std::string(name) + ": contains NaN or Inf");
}

py::array_t<float> copy_weights(const std::vector<float> &w, int M, int K) {
  py::array_t<float> a = aihw::new_array(M, K);
  std::memcpy(a.mutable_data(), w.data(), sizeof(float) * w.size());
  return a;
}

}  // namespace

void bind_tiles(py::module_ &m) {
  py::class_<FloatingPointTile>(m, "FloatingPointTile")
      .def(py::init([](int out_size, int in_size) {
             check_sizes(out_size, in_size);
             return new FloatingPointTile(out_size, in_size);
           }),
           py::arg("out_size"), py::arg("in_size"))
      .def_property_readonly("out_size", &FloatingPointTile::out_size)
      .def_property_readonly("in_size", &FloatingPointTile::in_size)
      .def_readwrite("learning_rate", &FloatingPointTile::learning_rate)
      .def("set_weights", [](FloatingPointTile &t, py::object w) {
             t.weights() = finite_weights(w, t.out_size(), t.in_size());
           }, py::arg("weights"))
      .def("get_weights", [](const FloatingPointTile &t) { return copy_weights(t.weights(), t.out_size(), t.in_size()); })
      .def("forward", [](FloatingPointTile &t, py::object x, py::object out) {
             FloatBuf xb = as_float_buffer(x, "x", false);
             expect_2d(xb, "x", -1, t.in_size());
             float *y;
             py::object r = output_or_new(out, "out", xb.shape[0], t.out_size(), &y);
             py::gil_scoped_release nogil;
             t.forward(xb.ptr, (int)xb.shape[0], y);
             return r;
           }, py::arg("x"), py::arg("out") = py::none(), "x [N, in_size] -> y [N, out_size] = x W^T (exact)")
      .def("backward", [](FloatingPointTile &t, py::object d, py::object out) {
             FloatBuf db = as_float_buffer(d, "d", false);
             expect_2d(db, "d", -1, t.out_size());
             float *z;
             py::object r = output_or_new(out, "out", db.shape[0], t.in_size(), &z);
             py::gil_scoped_release nogil;
             t.backward(db.ptr, (int)db.shape[0], z);
             return r;
           }, py::arg("d"), py::arg("out") = py::none(), "d [N, out_size] -> z [N, in_size] = d W (exact)")
      .def("update", [](FloatingPointTile &t, py::object x, py::object d) {
             FloatBuf xb = as_float_buffer(x, "x", false), db = as_float_buffer(d, "d", false);
             expect_2d(xb, "x", -1, t.in_size());
             expect_2d(db, "d", xb.shape[0], t.out_size());
             py::gil_scoped_release nogil;
             t.update(xb.ptr, db.ptr, (int)xb.shape[0]);
           }, py::arg("x"), py::arg("d"), "W -= learning_rate * d^T x");

  py::class_<AnalogTile>(m, "AnalogTile")
      .def(py::init([](int out_size, int in_size, const DeviceParameters &dev, const IOParameters &fwd,
                       const IOParameters &bwd, const UpdateParameters &up, const MappingParameter &map,
                       uint64_t seed) {
             check_sizes(out_size, in_size);
             check_valid(validate(dev), "device");
             check_valid(validate(fwd), "forward");
             check_valid(validate(bwd), "backward");
             check_valid(validate(up), "update");
             check_valid(validate(map), "mapping");
             py::gil_scoped_release nogil;
             return new AnalogTile(out_size, in_size, dev, fwd, bwd, up, map, seed);
           }),
           py::arg("out_size"), py::arg("in_size"), py::arg("device"), py::arg("forward"),
           py::arg("backward"), py::arg("update"), py::arg("mapping"), py::arg("seed") = 0)
      .def_property_readonly("out_size", &AnalogTile::out_size)
      .def_property_readonly("in_size", &AnalogTile::in_size)
      .def_readwrite("learning_rate", &AnalogTile::learning_rate)
      .def_property("forward_io", [](const AnalogTile &t) { return t.forward_io; },
                    [](AnalogTile &t, const IOParameters &p) { check_valid(validate(p), "forward"); t.forward_io = p; })
      .def_property("backward_io", [](const AnalogTile &t) { return t.backward_io; },
                    [](AnalogTile &t, const IOParameters &p) { check_valid(validate(p), "backward"); t.backward_io = p; })
      .def_property("update_parameters", [](const AnalogTile &t) { return t.update_par; },
                    [](AnalogTile &t, const UpdateParameters &p) { check_valid(validate(p), "update"); t.update_par = p; })
      .def_property_readonly("mapping", [](const AnalogTile &t) { return t.mapping; })
      .def_property_readonly("device", [](const AnalogTile &t) { return t.devices().par; })
      .def("set_weights", [](AnalogTile &t, py::object w) {
             auto v = finite_weights(w, t.out_size(), t.in_size());
             t.set_weights(v.data());
           }, py::arg("weights"), "Sets W [out_size, in_size], clipped to each device's bounds.")
      .def("get_weights", [](AnalogTile &t) { return copy_weights(t.weights(), t.out_size(), t.in_size()); })
      .def("forward", [](AnalogTile &t, py::object x, py::object out, py::object alpha, py::object weights) {
             FloatBuf xb = as_float_buffer(x, "x", false);
             expect_2d(xb, "x", -1, t.in_size());
             const float *ap = nullptr;
             int na = 0;
             if (!alpha.is_none()) {
               FloatBuf ab = as_float_buffer(alpha, "alpha", false);
               na = (int)ab.numel();
               if (na != 1 && na != t.out_size())
                 throw py::value_error("alpha: expected 1 or out_size values, got " + std::to_string(na));
               ap = ab.ptr;
             }
             const float *wp = nullptr;
             if (!weights.is_none()) {
               FloatBuf wb = as_float_buffer(weights, "weights", false);
               expect_2d(wb, "weights", t.out_size(), t.in_size());
               wp = wb.ptr;
             }
             float *y;
             py::object r = output_or_new(out, "out", xb.shape[0], t.out_size(), &y);
             py::gil_scoped_release nogil;
             t.forward(xb.ptr, (int)xb.shape[0], y, ap, na, wp);
             return r;
           }, py::arg("x"), py::arg("out") = py::none(), py::arg("alpha") = py::none(),
           py::arg("weights") = py::none(),
           "IO-managed forward: x [N, in_size] -> y [N, out_size]. `weights` replaces the tile's "
           "weights for this call (e.g. a modified copy); `alpha` multiplies the output.")
      .def("backward", [](AnalogTile &t, py::object d, py::object out, py::object weights) {
             FloatBuf db = as_float_buffer(d, "d", false);
             expect_2d(db, "d", -1, t.out_size());
             const float *wp = nullptr;
             if (!weights.is_none()) {
               FloatBuf wb = as_float_buffer(weights, "weights", false);
               expect_2d(wb, "weights", t.out_size(), t.in_size());
               wp = wb.ptr;
             }
             float *z;
             py::object r = output_or_new(out, "out", db.shape[0], t.in_size(), &z);
             py::gil_scoped_release nogil;
             t.backward(db.ptr, (int)db.shape[0], z, wp);
             return r;
           }, py::arg("d"), py::arg("out") = py::none(), py::arg("weights") = py::none(),
           "IO-managed backward: d [N, out_size] -> z [N, in_size] (no bound management)")
      .def("update", [](AnalogTile &t, py::object x, py::object d) {
             FloatBuf xb = as_float_buffer(x, "x", false), db = as_float_buffer(d, "d", false);
             expect_2d(xb, "x", -1, t.in_size());
             expect_2d(db, "d", xb.shape[0], t.out_size());
             check_finite(xb, "x");
             check_finite(db, "d");
             py::gil_scoped_release nogil;
             t.update(xb.ptr, db.ptr, (int)xb.shape[0]);
           }, py::arg("x"), py::arg("d"), "Pulsed update: W -= learning_rate * d^T x on the devices")
      .def_property_readonly("seed", &AnalogTile::seed)
      .def_property_readonly("call_index", &AnalogTile::call_index)
      .def("set_generator", &AnalogTile::set_generator, py::arg("seed"), py::arg("call_index"))
      .def("get_device_arrays", [](AnalogTile &t) {
             // [out, in, 6]: dw_up, dw_down, w_max, w_min, g_up, g_down
             const auto &cells = t.devices().cells;
             py::array_t<float> a({(py::ssize_t)t.out_size(), (py::ssize_t)t.in_size(), (py::ssize_t)6});
             std::memcpy(a.mutable_data(), cells.data(), sizeof(DeviceCell) * cells.size());
             return a;
           }, "Per-device parameters [out, in, 6]: dw_up, dw_down, w_max, w_min, gamma_up, gamma_down")
      .def("set_device_arrays", [](AnalogTile &t, py::object arr) {
             FloatBuf b = as_float_buffer(arr, "device_arrays", false);
             if (b.shape.size() != 3 || b.shape[0] != t.out_size() || b.shape[1] != t.in_size() || b.shape[2] != 6)
               throw py::value_error("device_arrays: expected shape (" + std::to_string(t.out_size()) + ", " +
                                     std::to_string(t.in_size()) + ", 6), got " + aihw::shape_str(b.shape));
             std::memcpy(t.devices().cells.data(), b.ptr, sizeof(DeviceCell) * t.devices().cells.size());
           }, py::arg("device_arrays"))
      .def("set_raw_weights", [](AnalogTile &t, py::object w) {
             auto v = finite_weights(w, t.out_size(), t.in_size());
             t.weights() = v;
           }, py::arg("weights"), "Sets W without clipping (restoring a saved state).");

  m.def("io_mvm", [](py::object weights, py::object x, py::object out, const IOParameters &io,
                     const MappingParameter &map, bool bound_management, py::object alpha, uint64_t seed,
                     uint64_t call, bool transposed) {
          check_valid(validate(io), "io");
          check_valid(validate(map), "mapping");
          FloatBuf wb = as_float_buffer(weights, "weights", false);
          if (wb.shape.size() != 2) throw py::value_error("weights: expected a 2-D matrix, got shape " + aihw::shape_str(wb.shape));
          const int M = (int)wb.shape[0], K = (int)wb.shape[1];
          const int in = transposed ? M : K, outn = transposed ? K : M;
          FloatBuf xb = as_float_buffer(x, "x", false);
          expect_2d(xb, "x", -1, in);
          const float *ap = nullptr;
          int na = 0;
          if (!alpha.is_none()) {
            FloatBuf ab = as_float_buffer(alpha, "alpha", false);
            na = (int)ab.numel();
            if (na != 1 && na != outn) throw py::value_error("alpha: expected 1 or " + std::to_string(outn) + " values");
            ap = ab.ptr;
          }
          float *y;
          py::object r = output_or_new(out, "out", xb.shape[0], outn, &y);
          py::gil_scoped_release nogil;
          io_mvm(wb.ptr, M, K, transposed, xb.ptr, (int)xb.shape[0], y, io, map, bound_management, ap, na,
                 MVMCall{seed, call});
          return r;
        },
        py::arg("weights"), py::arg("x"), py::arg("out") = py::none(), py::arg("io"), py::arg("mapping"),
        py::arg("bound_management") = true, py::arg("alpha") = py::none(), py::arg("seed") = 0,
        py::arg("call") = 0, py::arg("transposed") = false,
        "The analog MVM of SPEC §1: weights [M, K], x [N, K] -> [N, M] (transposed: x [N, M] -> [N, K]).");
}
