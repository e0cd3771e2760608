// aihw_deploy.simulator.rpu_base: 1:1 bindings of rpucuda.
#include <pybind11/pybind11.h>

#include "threading.h"

namespace py = pybind11;

void bind_parameters(py::module_ &m);
void bind_tiles(py::module_ &m);
void bind_devices(py::module_ &m);
void bind_inference(py::module_ &m);
void bind_rng(py::module_ &m);
void bind_cuda(py::module_ &m);

PYBIND11_MODULE(rpu_base, m) {
  m.doc() = "rpucuda bindings: tiles, devices, parameters, inference, CUDA";
  m.attr("__version__") = AIHW_VERSION;
  m.def("set_num_threads", &rpu::set_num_threads, py::arg("n"),
        "Threads used by rpucuda (one pool; BLAS runs single-threaded inside it).");
  m.def("get_num_threads", &rpu::get_num_threads);
  auto params = m.def_submodule("parameters", "Parameter structs and enums");
  bind_parameters(params);
  auto tiles = m.def_submodule("tiles", "Tiles and the analog MVM");
  bind_tiles(tiles);
  auto devices = m.def_submodule("devices", "Device models");
  bind_devices(devices);
  auto inference = m.def_submodule("inference", "PCM programming, drift, read noise, compensation");
  bind_inference(inference);
  auto rng = m.def_submodule("rng", "Counter-based random numbers (Philox4x32-10), for testing");
  bind_rng(rng);
  auto cuda = m.def_submodule("cuda", "CUDA twins of rpucuda (device pointers, torch streams)");
  bind_cuda(cuda);
}
