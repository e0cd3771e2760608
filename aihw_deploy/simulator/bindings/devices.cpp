// Bindings of the device models (aihw_deploy.simulator.rpu_base.devices).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "buffers.h"
#include "device_step.h"
#include "devices.h"

namespace py = pybind11;
using namespace rpu;

void bind_devices(py::module_ &m) {
  m.def("pulse_response", [](const DeviceParameters &p, py::array_t<float> cell, float w, int direction, float xi) {
          if (cell.size() != 6) throw py::value_error("cell: expected 6 values (dw_up, dw_down, w_max, w_min, gamma_up, gamma_down)");
          if (direction != 1 && direction != -1) throw py::value_error("direction must be +1 or -1");
          DeviceCell c;
          const float *d = cell.data();
          c.dw_up = d[0]; c.dw_down = d[1]; c.w_max = d[2]; c.w_min = d[3]; c.g_up = d[4]; c.g_down = d[5];
          return device_pulse(p, c, w, direction, xi);
        },
        py::arg("device"), py::arg("cell"), py::arg("w"), py::arg("direction"), py::arg("xi") = 0.0f,
        "Weight after one pulse of one device (SPEC §3); xi is the cycle-to-cycle normal sample.");
}
