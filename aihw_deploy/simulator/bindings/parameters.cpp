// Bindings of the parameter structs and enums (aihw_deploy.simulator.rpu_base.parameters).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "parameters.h"

namespace py = pybind11;
using namespace rpu;

void bind_parameters(py::module_ &m) {
  py::enum_<NoiseManagementType>(m, "NoiseManagementType")
      .value("NONE", NoiseManagementType::None)
      .value("ABS_MAX", NoiseManagementType::AbsMax)
      .value("MAX", NoiseManagementType::Max)
      .value("AVERAGE_ABS_MAX", NoiseManagementType::AverageAbsMax)
      .value("CONSTANT", NoiseManagementType::Constant);
  py::enum_<BoundManagementType>(m, "BoundManagementType")
      .value("NONE", BoundManagementType::None)
      .value("ITERATIVE", BoundManagementType::Iterative)
      .value("ITERATIVE_WORST_CASE", BoundManagementType::IterativeWorstCase);
  py::enum_<WeightNoiseType>(m, "WeightNoiseType")
      .value("NONE", WeightNoiseType::None)
      .value("ADDITIVE_CONSTANT", WeightNoiseType::AdditiveConstant)
      .value("PCM_READ", WeightNoiseType::PCMRead);
  py::enum_<PulseType>(m, "PulseType")
      .value("NONE", PulseType::None)
      .value("STOCHASTIC", PulseType::Stochastic)
      .value("STOCHASTIC_COMPRESSED", PulseType::StochasticCompressed)
      .value("DETERMINISTIC_IMPLICIT", PulseType::DeterministicImplicit);
  py::enum_<DeviceType>(m, "DeviceType")
      .value("FLOATING_POINT", DeviceType::FloatingPoint)
      .value("CONSTANT_STEP", DeviceType::ConstantStep)
      .value("LINEAR_STEP", DeviceType::LinearStep)
      .value("SOFT_BOUNDS", DeviceType::SoftBounds)
      .value("EXP_STEP", DeviceType::ExpStep)
      .value("POW_STEP", DeviceType::PowStep);

#define RW(cls, f) .def_readwrite(#f, &cls::f)
  py::class_<IOParameters>(m, "IOParameters")
      .def(py::init<>())
      RW(IOParameters, is_perfect) RW(IOParameters, inp_bound) RW(IOParameters, inp_res)
      RW(IOParameters, inp_sto_round) RW(IOParameters, inp_noise) RW(IOParameters, out_bound)
      RW(IOParameters, out_res) RW(IOParameters, out_sto_round) RW(IOParameters, out_noise)
      RW(IOParameters, out_scale) RW(IOParameters, w_noise) RW(IOParameters, w_noise_type)
      RW(IOParameters, noise_management) RW(IOParameters, bound_management)
      RW(IOParameters, nm_thres) RW(IOParameters, max_bm_factor) RW(IOParameters, max_bm_res)
      .def("validate", [](const IOParameters &p) { return validate(p); });
  py::class_<UpdateParameters>(m, "UpdateParameters")
      .def(py::init<>())
      RW(UpdateParameters, desired_bl) RW(UpdateParameters, pulse_type)
      RW(UpdateParameters, update_management) RW(UpdateParameters, update_bl_management)
      RW(UpdateParameters, fixed_bl) RW(UpdateParameters, sto_round)
      .def("validate", [](const UpdateParameters &p) { return validate(p); });
  py::class_<MappingParameter>(m, "MappingParameter")
      .def(py::init<>())
      RW(MappingParameter, max_input_size) RW(MappingParameter, max_output_size)
      RW(MappingParameter, digital_bias)
      .def("validate", [](const MappingParameter &p) { return validate(p); });
  py::class_<DeviceParameters>(m, "DeviceParameters")
      .def(py::init<>())
      .def_static("defaults", &default_device_parameters, py::arg("type"))
      RW(DeviceParameters, type) RW(DeviceParameters, dw_min) RW(DeviceParameters, dw_min_dtod)
      RW(DeviceParameters, dw_min_std) RW(DeviceParameters, w_max) RW(DeviceParameters, w_max_dtod)
      RW(DeviceParameters, w_min) RW(DeviceParameters, w_min_dtod) RW(DeviceParameters, up_down)
      RW(DeviceParameters, up_down_dtod) RW(DeviceParameters, construction_seed)
      RW(DeviceParameters, enforce_consistency) RW(DeviceParameters, gamma_up)
      RW(DeviceParameters, gamma_down) RW(DeviceParameters, gamma_up_dtod)
      RW(DeviceParameters, gamma_down_dtod) RW(DeviceParameters, A_up) RW(DeviceParameters, A_down)
      RW(DeviceParameters, a) RW(DeviceParameters, b) RW(DeviceParameters, pow_gamma)
      RW(DeviceParameters, pow_gamma_dtod) RW(DeviceParameters, pow_up_down)
      RW(DeviceParameters, pow_up_down_dtod)
      .def("validate", [](const DeviceParameters &p) { return validate(p); });
#undef RW
}
