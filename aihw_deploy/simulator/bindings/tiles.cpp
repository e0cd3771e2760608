// Bindings of the tiles (aihw_deploy.simulator.rpu_base.tiles).  Tensors/arrays are used in
// place (no copy); the GIL is released while rpucuda computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#if defined(__unix__)
#include <sys/mman.h>
#endif

#include "buffers.h"
#include "im2col.h"
#include "io_conv.h"
#include "io_pipeline.h"
#include "threading.h"
#include "tile.h"

namespace py = pybind11;
using namespace rpu;
using aihw::as_float_buffer;
using aihw::expect_2d;
using aihw::FloatBuf;
using aihw::optional_vector;

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

// A new float32 array [rows, cols].  A large one (an unfolded input, tens of MB per training
// step) gets its own anonymous mapping, unmapped when the array dies: freed through malloc it
// would raise glibc's dynamic mmap threshold to its size, after which every freed block below
// that size stays in the heap (the peak memory of the next steps grows by that much).
py::array_t<float> new_large_array(int64_t rows, int64_t cols) {
#if defined(__unix__)
  const size_t bytes = sizeof(float) * (size_t)rows * (size_t)cols;
  if (bytes >= ((size_t)1 << 20)) {
    void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    struct Mapping {
      void *p;
      size_t bytes;
    };
    py::capsule owner(new Mapping{p, bytes}, [](void *m) {
      auto *mm = static_cast<Mapping *>(m);
      munmap(mm->p, mm->bytes);
      delete mm;
    });
    return py::array_t<float>({(py::ssize_t)rows, (py::ssize_t)cols}, static_cast<float *>(p), owner);
  }
#endif
  return aihw::new_array(rows, cols);
}

// The convolution geometry of input x [N, C_total, *spatial] for the channels
// channel_offset .. channel_offset+channels-1 (one group).
ConvShape conv_geometry(const FloatBuf &x, const std::vector<int64_t> &kernel, const std::vector<int64_t> &stride,
                        const std::vector<int64_t> &padding, const std::vector<int64_t> &dilation,
                        int64_t channel_offset, int64_t channels, const char *what) {
  const int d = (int)x.shape.size() - 2;
  if (d < 1 || d > 3)
    throw py::value_error(std::string(what) + ": x must be [N, C, *spatial] with 1 to 3 spatial dimensions, got shape " +
                          aihw::shape_str(x.shape));
  for (auto *v : {&kernel, &stride, &padding, &dilation})
    if ((int)v->size() != d)
      throw py::value_error(std::string(what) + ": kernel_size, stride, padding and dilation need " + std::to_string(d) +
                            " entries each for x of shape " + aihw::shape_str(x.shape));
  if (channel_offset < 0 || channels < 1 || channel_offset + channels > x.shape[1])
    throw py::value_error(std::string(what) + ": channels " + std::to_string(channel_offset) + " .. " +
                          std::to_string(channel_offset + channels - 1) + " are not inside the " +
                          std::to_string(x.shape[1]) + " channels of x");
  ConvShape s;
  check_valid(conv_shape(d, x.shape[0], channels, x.shape.data() + 2, kernel.data(), stride.data(), padding.data(),
                         dilation.data(), &s),
              what);
  s.image_stride = x.shape[1] * s.in_volume();
  return s;
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
      .def("update_conv", [](AnalogTile &t, py::object x, py::object d, std::vector<int64_t> kernel_size,
                             std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                             bool ones_column) {
             // update(im2col(x), d) with the unfolded rows made block by block (never the whole
             // unfolded input, which is (kernel volume) times larger than x)
             FloatBuf xb = as_float_buffer(x, "x", false), db = as_float_buffer(d, "d", false);
             if (xb.shape.size() < 3)
               throw py::value_error("x: expected [N, C, *spatial], got shape " + aihw::shape_str(xb.shape));
             const ConvShape s = conv_geometry(xb, kernel_size, stride, padding, dilation, 0, xb.shape[1], "update_conv");
             const int64_t K = s.cols() + (ones_column ? 1 : 0);
             if (K != t.in_size())
               throw py::value_error("update_conv: the unfolded input has " + std::to_string(K) + " columns, the tile " +
                                     std::to_string(t.in_size()) + " inputs");
             if (s.rows() >= INT32_MAX)
               throw py::value_error("update_conv: too many output positions (" + std::to_string(s.rows()) + ")");
             expect_2d(db, "d", s.rows(), t.out_size());
             check_finite(xb, "x");
             check_finite(db, "d");
             const float *X = xb.ptr;
             const RowBlockFn rows = [&](int64_t n0, int count, float *out) {
               thread_local ColumnsBlock cb;
               thread_local std::vector<float> T;
               T.resize((size_t)K * kRowBlock);
               cb.prepare(s, n0, count);
               cb.fill(X, ones_column, 0, K, T.data(), kRowBlock);
               transpose_block(T.data(), kRowBlock, count, K, out, K);
             };
             py::gil_scoped_release nogil;
             t.update(rows, db.ptr, (int)s.rows());
           }, py::arg("x"), py::arg("d"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"),
           py::arg("dilation"), py::arg("ones_column") = false,
           "Pulsed update of a convolution's tile: update(im2col(x), d) for x [N, C, *spatial] and d [N * L, out] "
           "(the same result), without the unfolded input in memory.")
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
                     uint64_t call, bool transposed, py::object bias) {
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
          const float *bp = optional_vector(bias, "bias", outn);
          float *y;
          py::object r = output_or_new(out, "out", xb.shape[0], outn, &y);
          py::gil_scoped_release nogil;
          const int64_t N = xb.shape[0];
          io_mvm(wb.ptr, M, K, transposed, xb.ptr, (int)N, y, io, map, bound_management, ap, na, MVMCall{seed, call});
          if (bp != nullptr) add_bias(y, N, outn, bp);
          return r;
        },
        py::arg("weights"), py::arg("x"), py::arg("out") = py::none(), py::arg("io"), py::arg("mapping"),
        py::arg("bound_management") = true, py::arg("alpha") = py::none(), py::arg("seed") = 0,
        py::arg("call") = 0, py::arg("transposed") = false, py::arg("bias") = py::none(),
        "The analog MVM of SPEC §1: weights [M, K], x [N, K] -> [N, M] (transposed: x [N, M] -> [N, K]); bias "
        "(optional, [out]) is added after the analog part (a digital bias).");

  m.def("new_array", [](int64_t rows, int64_t cols) {
          if (rows < 0 || cols < 0)
            throw py::value_error("new_array: sizes must be >= 0, got " + std::to_string(rows) + " x " + std::to_string(cols));
          return new_large_array(rows, cols);
        },
        py::arg("rows"), py::arg("cols"),
        "A new float32 array [rows, cols] (uninitialized); a large one in its own memory mapping, outside "
        "malloc's heap.");

  m.def("all_finite", [](py::object x) {
          FloatBuf b = as_float_buffer(x, "x", false);
          const int64_t n = b.numel();
          const float *p = b.ptr;
          std::atomic<bool> ok{true};
          py::gil_scoped_release nogil;
          parallel_for((n + 4095) / 4096, 16, [&](int64_t c0, int64_t c1) {
            const int64_t e = std::min(n, c1 * 4096);
            int bad = 0;
            for (int64_t i = c0 * 4096; i < e; ++i) bad |= !std::isfinite(p[i]);
            if (bad) ok = false;
          });
          return ok.load();
        },
        py::arg("x"), "True when the float32 tensor or array x has no NaN or Inf (a check on the thread pool).");

  m.def("im2col", [](py::object x, std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                     std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t channel_offset,
                     int64_t channels, bool ones_column, py::object out) {
          FloatBuf xb = as_float_buffer(x, "x", false);
          if (channels < 0 && xb.shape.size() >= 2) channels = xb.shape[1] - channel_offset;
          const ConvShape s = conv_geometry(xb, kernel_size, stride, padding, dilation, channel_offset, channels, "im2col");
          float *cols;
          const int64_t n_cols = s.cols() + (ones_column ? 1 : 0);
          py::object r;
          if (out.is_none()) {
            py::array_t<float> a = new_large_array(s.rows(), n_cols);
            cols = a.mutable_data();
            r = std::move(a);
          } else {
            r = output_or_new(out, "out", s.rows(), n_cols, &cols);
          }
          py::gil_scoped_release nogil;
          im2col(xb.ptr + channel_offset * s.in_volume(), s, ones_column, cols, s.cols() + (ones_column ? 1 : 0));
          return r;
        },
        py::arg("x"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("channel_offset") = 0, py::arg("channels") = -1, py::arg("ones_column") = false,
        py::arg("out") = py::none(),
        "Unfolded input of a convolution: x [N, C, *spatial] -> [N * prod(out), channels * prod(kernel_size) "
        "(+1)]; row (n, *out position), column (channel, *kernel offset); the channels channel_offset .. "
        "channel_offset+channels-1 (default: all); ones_column appends a column of ones.");

  m.def("col2im", [](py::object cols, py::object out, std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                     std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t channel_offset,
                     int64_t channels, const std::string &order) {
          if (order != "fold" && order != "unfold")
            throw py::value_error("col2im: order must be 'fold' or 'unfold', got '" + order + "'");
          FloatBuf ob = as_float_buffer(out, "out", true);
          if (channels < 0 && ob.shape.size() >= 2) channels = ob.shape[1] - channel_offset;
          const ConvShape s = conv_geometry(ob, kernel_size, stride, padding, dilation, channel_offset, channels, "col2im");
          FloatBuf cb = as_float_buffer(cols, "cols", false);
          if (cb.shape.size() != 2 || cb.shape[0] != s.rows() || cb.shape[1] < s.cols())
            throw py::value_error("col2im: cols must be [" + std::to_string(s.rows()) + ", >= " + std::to_string(s.cols()) +
                                  "] for this geometry, got shape " + aihw::shape_str(cb.shape));
          py::gil_scoped_release nogil;
          col2im(cb.ptr, cb.shape[1], s, order == "fold" ? Col2imOrder::Columns : Col2imOrder::NestedWindows,
                 ob.ptr + channel_offset * s.in_volume());
          return out;
        },
        py::arg("cols"), py::arg("out"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("channel_offset") = 0, py::arg("channels") = -1, py::arg("order") = "fold",
        "The adjoint of im2col (the gradient of the input): writes channels channel_offset .. "
        "channel_offset+channels-1 of out [N, C, *spatial]; extra columns of cols (a ones column) are ignored.  "
        "order='fold': sums in ascending column order (the values of torch.nn.functional.fold); 'unfold': "
        "per dimension, innermost first, over the windows in ascending order (the gradient of F.pad + "
        "Tensor.unfold along each dimension).");

  m.def("io_conv", [](py::object weights, py::object x, py::object out, const IOParameters &io,
                      const MappingParameter &map, std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                      std::vector<int64_t> padding, std::vector<int64_t> dilation, int groups, bool ones_column,
                      py::object alpha, std::vector<uint64_t> seeds, std::vector<uint64_t> calls,
                      bool bound_management, py::object bias, const std::string &layout, bool check_finite) {
          if (layout != "channels" && layout != "rows")
            throw py::value_error("io_conv: layout must be 'channels' or 'rows', got '" + layout + "'");
          check_valid(validate(io), "io");
          check_valid(validate(map), "mapping");
          FloatBuf wb = as_float_buffer(weights, "weights", false);
          FloatBuf xb = as_float_buffer(x, "x", false);
          FloatBuf ob = as_float_buffer(out, "out", true);
          if (wb.shape.size() != 2)
            throw py::value_error("weights: expected a 2-D matrix, got shape " + aihw::shape_str(wb.shape));
          if (xb.shape.size() < 3)
            throw py::value_error("x: expected [N, C, *spatial], got shape " + aihw::shape_str(xb.shape));
          const int64_t M = wb.shape[0], C = xb.shape[1];
          if (groups < 1 || M % groups || C % groups)
            throw py::value_error("io_conv: groups=" + std::to_string(groups) + " must divide the " + std::to_string(M) +
                                  " outputs and the " + std::to_string(C) + " input channels");
          if ((int64_t)seeds.size() != groups || (int64_t)calls.size() != groups)
            throw py::value_error("io_conv: need one seed and one call per group (groups=" + std::to_string(groups) + ")");
          const int64_t Cg = C / groups, Mg = M / groups;
          const ConvShape s = conv_geometry(xb, kernel_size, stride, padding, dilation, 0, Cg, "io_conv");
          const int64_t K = s.cols() + (ones_column ? 1 : 0);
          if (wb.shape[1] != K)
            throw py::value_error("io_conv: weights must have " + std::to_string(K) + " columns for " + std::to_string(Cg) +
                                  " channels per group and this kernel, got " + std::to_string(wb.shape[1]));
          std::vector<int64_t> yshape = {s.batch, M};
          for (int i = 3 - ((int)xb.shape.size() - 2); i < 3; ++i) yshape.push_back(s.out[i]);
          if (layout == "rows") yshape = {s.rows(), M};
          if (ob.shape != yshape)
            throw py::value_error("out: expected shape " + aihw::shape_str(yshape) + ", got " + aihw::shape_str(ob.shape));
          if (s.rows() >= INT32_MAX)
            throw py::value_error("io_conv: too many output positions (" + std::to_string(s.rows()) + ")");
          const float *ap = nullptr;
          int na = 0;
          if (!alpha.is_none()) {
            FloatBuf ab = as_float_buffer(alpha, "alpha", false);
            const int64_t per = ab.numel() / groups;
            if (ab.numel() % groups || (per != 1 && per != Mg))
              throw py::value_error("alpha: expected [groups, 1] or [groups, " + std::to_string(Mg) + "] values, got shape " +
                                    aihw::shape_str(ab.shape));
            ap = ab.ptr;
            na = (int)per;
          }
          const float *bp = optional_vector(bias, "bias", M);
          const int64_t L = s.out_volume();
          const ConvOutputLayout yl = layout == "rows" ? ConvOutputLayout::rows(M, L) : ConvOutputLayout::channels(M, L);
          bool finite = true;
          {
            py::gil_scoped_release nogil;
            for (int g = 0; g < groups; ++g) {
              bool bad = false;
              io_conv(wb.ptr + g * Mg * K, (int)Mg, (int)K, xb.ptr + g * Cg * s.in_volume(), s, ones_column,
                      ob.ptr + g * Mg * yl.channel, yl, io, map, bound_management,
                      ap == nullptr ? nullptr : ap + g * na, na, bp == nullptr ? nullptr : bp + g * Mg,
                      MVMCall{seeds[g], calls[g]}, check_finite ? &bad : nullptr);
              finite = finite && !bad;
            }
          }
          return finite;
        },
        py::arg("weights"), py::arg("x"), py::arg("out"), py::arg("io"), py::arg("mapping"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups") = 1,
        py::arg("ones_column") = false, py::arg("alpha") = py::none(), py::arg("seeds") = std::vector<uint64_t>{0},
        py::arg("calls") = std::vector<uint64_t>{0}, py::arg("bound_management") = true, py::arg("bias") = py::none(),
        py::arg("layout") = "channels", py::arg("check_finite") = false,
        "Analog convolution: x [N, C, *spatial] -> out [N, M, *out] with weights [M, C/groups * prod(kernel_size) "
        "(+1 with ones_column)] (group tiles stacked); per group the values of io_mvm on im2col(x) with that "
        "group's seed and call, bit for bit.  alpha: [groups, 1] or [groups, M/groups]; bias: [M] digital bias "
        "added last.  layout='rows': out is [N * prod(out), M] (the rows of io_mvm) instead.  Returns False "
        "when check_finite is set and x holds a NaN or Inf (found while the input is read anyway; out is then "
        "meaningless), else True.");
}
