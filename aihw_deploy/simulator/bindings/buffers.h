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
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "is_contiguous")) {  // torch.Tensor
    std::string dtype = py::str(obj.attr("dtype"));
    if (dtype != "torch.float32")
      throw py::type_error(std::string(name) + ": expected dtype torch.float32, got " + dtype);
    std::string dev = py::str(obj.attr("device").attr("type"));
    if (dev != "cpu")
      throw py::value_error(std::string(name) + ": tensor is on device '" + dev +
                            "', but this build of rpu_base only has CPU kernels");
    if (!obj.attr("is_contiguous")().cast<bool>())
      throw py::value_error(std::string(name) + ": tensor must be contiguous (call .contiguous())");
    for (auto s : obj.attr("shape")) b.shape.push_back(s.cast<int64_t>());
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

inline py::array_t<float> new_array(int64_t rows, int64_t cols) {
  return py::array_t<float>({(py::ssize_t)rows, (py::ssize_t)cols});
}

}  // namespace aihw
