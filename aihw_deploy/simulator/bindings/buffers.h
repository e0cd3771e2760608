// Zero-copy access to float32 buffers coming from torch tensors or numpy arrays.
// All checking of dtype, device, contiguity and shape lives here, not in rpucuda.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace py = pybind11;

namespace aihw {

struct FloatBuf {
  float *ptr = nullptr;
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

inline std::string shape_str(const std::vector<int64_t> &s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// `name` is the argument name used in error messages.
inline FloatBuf as_float_buffer(py::handle obj, const char *name, bool writable) {
  FloatBuf b;
  if (obj.is_none()) throw py::type_error(std::string(name) + ": expected a float32 tensor or array, got None");
  // torch.Tensor, recognised without linking libtorch.  The common case (float32, CPU,
  // contiguous) is checked with cheap identity/bool attribute tests.
  static PyObject *tensor_type = nullptr;
  static PyObject *torch_float32 = nullptr;
  if (tensor_type == nullptr) {
    PyObject *torch = PyImport_GetModule(py::str("torch").ptr());  // only if already imported
    if (torch != nullptr) {
      py::object t = py::reinterpret_steal<py::object>(torch);
      tensor_type = py::object(t.attr("Tensor")).release().ptr();
      torch_float32 = py::object(t.attr("float32")).release().ptr();
    } else {
      PyErr_Clear();
    }
  }
  if (tensor_type != nullptr && PyObject_IsInstance(obj.ptr(), tensor_type) == 1) {
    py::object dtype = obj.attr("dtype");
    if (dtype.ptr() != torch_float32)
      throw py::type_error(std::string(name) + ": expected dtype torch.float32, got " + std::string(py::str(dtype)));
    if (!obj.attr("is_cpu").cast<bool>()) {
      std::string dev = py::str(obj.attr("device").attr("type"));
      throw py::value_error(std::string(name) + ": tensor is on device '" + dev +
                            "', but this build of rpu_base only has CPU kernels");
    }
    if (!obj.attr("is_contiguous")().cast<bool>())
      throw py::value_error(std::string(name) + ": tensor must be contiguous (call .contiguous())");
    py::tuple shape = py::tuple(obj.attr("shape"));
    for (auto v : shape) b.shape.push_back(v.cast<int64_t>());
    b.ptr = reinterpret_cast<float *>(obj.attr("data_ptr")().cast<uintptr_t>());
    return b;
  }
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<float>()))
      throw py::type_error(std::string(name) + ": expected dtype float32, got " +
                           std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(std::string(name) + ": array must be C-contiguous");
    if (writable && !a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
    for (py::ssize_t i = 0; i < a.ndim(); ++i) b.shape.push_back(a.shape(i));
    b.ptr = static_cast<float *>(const_cast<void *>(a.data()));
    return b;
  }
  throw py::type_error(std::string(name) + ": expected a float32 torch.Tensor or numpy.ndarray, got " +
                       std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

// Checks that `b` is 2-D [rows, cols]; rows < 0 means any.
inline void expect_2d(const FloatBuf &b, const char *name, int64_t rows, int64_t cols) {
  if (b.shape.size() != 2 || (rows >= 0 && b.shape[0] != rows) || b.shape[1] != cols) {
    std::string want = "(" + (rows >= 0 ? std::to_string(rows) : std::string("N")) + ", " + std::to_string(cols) + ")";
    throw py::value_error(std::string(name) + ": expected shape " + want + ", got " + shape_str(b.shape));
  }
}

// An optional vector of n floats (e.g. a digital bias): nullptr for None, else its data.
inline const float *optional_vector(py::handle obj, const char *name, int64_t n) {
  if (obj.is_none()) return nullptr;
  FloatBuf b = as_float_buffer(obj, name, false);
  if (b.numel() != n)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " values, got shape " +
                          shape_str(b.shape));
  return b.ptr;
}

inline py::array_t<float> new_array(int64_t rows, int64_t cols) {
  return py::array_t<float>({(py::ssize_t)rows, (py::ssize_t)cols});
}

}  // namespace aihw
