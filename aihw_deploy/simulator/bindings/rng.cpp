// Bindings of the counter-based generator (aihw_deploy.simulator.rpu_base.rng), for testing:
// Philox4x32-10 known-answer vectors and the normal/uniform transforms used by rpucuda.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <vector>

#include "rng.h"

namespace py = pybind11;

void bind_rng(py::module_ &m) {
  m.def("philox4x32_10", [](std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
          rpu::Philox4 b = rpu::philox4x32_10(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1]);
          return std::array<uint32_t, 4>{b.v[0], b.v[1], b.v[2], b.v[3]};
        },
        py::arg("counter"), py::arg("key"),
        "Philox4x32-10 block: counter (4 x uint32), key (2 x uint32) -> 4 x uint32.");
  m.def("normal_at", &rpu::normal_at, py::arg("seed"), py::arg("tag"), py::arg("sub"), py::arg("call"),
        py::arg("index"), "Standard normal number `index` of the stream (seed, tag, sub, call).");
  m.def("uniform_at", &rpu::uniform_at, py::arg("seed"), py::arg("tag"), py::arg("sub"), py::arg("call"),
        py::arg("index"), "Uniform (0,1) number `index` of the stream (seed, tag, sub, call).");
  auto bulk = [](bool normal) {
    return [normal](int64_t n, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call, uint64_t base) {
      if (n < 0) throw py::value_error("n must be >= 0, got " + std::to_string(n));
      if (base % 4 != 0) throw py::value_error("base must be a multiple of 4, got " + std::to_string(base));
      py::array_t<float> out((py::ssize_t)n);
      float *p = out.mutable_data();
      {
        py::gil_scoped_release nogil;
        if (normal) rpu::fill_normal_bulk(p, n, seed, tag, sub, call, base);
        else rpu::fill_uniform_bulk(p, n, seed, tag, sub, call, base);
      }
      return out;
    };
  };
  m.def("normals", bulk(true), py::arg("n"), py::arg("seed"), py::arg("tag"), py::arg("sub"), py::arg("call"),
        py::arg("base") = 0, "Standard normals number base .. base+n-1 of a stream (bulk generator).");
  auto columns = [](bool normal) {
    return [normal](int64_t L, std::vector<uint64_t> bases, uint64_t seed, uint32_t tag, uint32_t sub, uint64_t call) {
      if (L < 0) throw py::value_error("L must be >= 0, got " + std::to_string(L));
      for (uint64_t b : bases)
        if (b % 4 != 0) throw py::value_error("every base must be a multiple of 4, got " + std::to_string(b));
      py::array_t<float> out({(py::ssize_t)L, (py::ssize_t)bases.size()});
      float *p = out.mutable_data();
      {
        py::gil_scoped_release nogil;
        const int n = (int)bases.size();
        if (normal) rpu::fill_normal_columns(p, n, (int)L, n, bases.data(), seed, tag, sub, call);
        else rpu::fill_uniform_columns(p, n, (int)L, n, bases.data(), seed, tag, sub, call);
      }
      return out;
    };
  };
  m.def("normals_columns", columns(true), py::arg("L"), py::arg("bases"), py::arg("seed"), py::arg("tag"),
        py::arg("sub"), py::arg("call"),
        "[L, len(bases)]: column c holds the standard normals number bases[c] .. bases[c]+L-1 of the stream "
        "(the many-streams generator of the convolution pipeline).");
  m.def("uniforms_columns", columns(false), py::arg("L"), py::arg("bases"), py::arg("seed"), py::arg("tag"),
        py::arg("sub"), py::arg("call"), "The same for uniforms in (0, 1).");
  m.def("uniforms", bulk(false), py::arg("n"), py::arg("seed"), py::arg("tag"), py::arg("sub"), py::arg("call"),
        py::arg("base") = 0, "Uniforms (0,1) number base .. base+n-1 of a stream (bulk generator).");
}
