"""Parameter dataclasses: Python defaults equal the C++ defaults (and SPEC), every field reaches
the C++ struct, enums map by name."""

from dataclasses import fields
from enum import Enum

import numpy as np
import pytest

from aihw_deploy.simulator import rpu_base
from aihw_deploy.simulator.parameters import (
    BoundManagementType,
    ConstantStepDevice,
    ExpStepDevice,
    FloatingPointDevice,
    IOParameters,
    LinearStepDevice,
    MappingParameter,
    NoiseManagementType,
    PowStepDevice,
    PulseType,
    SoftBoundsDevice,
    UpdateParameters,
    WeightNoiseType,
)

P = rpu_base.parameters
DEVICE_TYPES = {
    ConstantStepDevice: "CONSTANT_STEP",
    LinearStepDevice: "LINEAR_STEP",
    SoftBoundsDevice: "SOFT_BOUNDS",
    ExpStepDevice: "EXP_STEP",
    PowStepDevice: "POW_STEP",
}


def cpp_fields(obj):
    return {a for a in dir(obj) if not a.startswith("_") and not callable(getattr(obj, a))} - {"type"}


def same_value(py, cpp):
    if isinstance(py, Enum):
        return py.name == cpp.name
    if isinstance(py, bool) or isinstance(cpp, bool):
        return py is cpp or py == cpp and type(py) is type(cpp)
    if isinstance(py, float):
        return np.float32(py) == np.float32(cpp)  # the C++ side stores float32
    return py == cpp


def assert_defaults_equal(py_obj, cpp_obj):
    for f in fields(py_obj):
        v = getattr(py_obj, f.name)
        assert hasattr(cpp_obj, f.name), f"{type(py_obj).__name__}.{f.name} missing in C++"
        assert same_value(v, getattr(cpp_obj, f.name)), (f.name, v, getattr(cpp_obj, f.name))


@pytest.mark.parametrize(
    "py_cls,cpp_cls",
    [(IOParameters, P.IOParameters), (UpdateParameters, P.UpdateParameters),
     (MappingParameter, P.MappingParameter)],
)
def test_python_defaults_equal_cpp_defaults(py_cls, cpp_cls):
    py, cpp = py_cls(), cpp_cls()
    assert_defaults_equal(py, cpp)
    # and the two sides have the same fields
    assert {f.name for f in fields(py)} == cpp_fields(cpp)


@pytest.mark.parametrize("py_cls", list(DEVICE_TYPES))
def test_device_defaults_equal_cpp_defaults(py_cls):
    cpp = P.DeviceParameters.defaults(getattr(P.DeviceType, DEVICE_TYPES[py_cls]))
    assert_defaults_equal(py_cls(), cpp)
    # the converted default dataclass equals the C++ defaults of its type in every field
    b = py_cls().as_bindings()
    assert b.type.name == DEVICE_TYPES[py_cls]
    for name in cpp_fields(cpp):
        assert same_value(getattr(b, name), getattr(cpp, name)), name


def test_all_cpp_device_fields_are_reachable_from_python():
    reachable = set()
    for cls in DEVICE_TYPES:
        reachable |= {f.name for f in fields(cls)}
    # pow_up_down_dtod etc. must be settable from some device dataclass
    assert cpp_fields(P.DeviceParameters()) == reachable


def test_floating_point_device_bindings():
    b = FloatingPointDevice().as_bindings()
    assert b.type == P.DeviceType.FLOATING_POINT


SPEC_DEFAULTS = {
    IOParameters: dict(is_perfect=False, inp_bound=1.0, inp_res=1 / 126, inp_sto_round=False, inp_noise=0.0,
                       out_bound=12.0, out_res=1 / 510, out_sto_round=False, out_noise=0.06, out_scale=1.0,
                       w_noise=0.0, w_noise_type=WeightNoiseType.NONE, noise_management=NoiseManagementType.ABS_MAX,
                       bound_management=BoundManagementType.ITERATIVE, nm_thres=0.0, max_bm_factor=1000.0,
                       max_bm_res=0.25),
    UpdateParameters: dict(desired_bl=31, pulse_type=PulseType.STOCHASTIC_COMPRESSED, update_management=True,
                           update_bl_management=True, fixed_bl=True, sto_round=False),
    MappingParameter: dict(max_input_size=512, max_output_size=512, digital_bias=True),
    ConstantStepDevice: dict(dw_min=0.001, dw_min_dtod=0.3, dw_min_std=0.3, w_max=0.6, w_max_dtod=0.3, w_min=-0.6,
                             w_min_dtod=0.3, up_down=0.0, up_down_dtod=0.01, construction_seed=0,
                             enforce_consistency=True),
    LinearStepDevice: dict(gamma_up=0.0, gamma_down=0.0, gamma_up_dtod=0.05, gamma_down_dtod=0.05),
    ExpStepDevice: dict(a=0.244, b=0.2425, gamma_up=12.44625, gamma_down=12.78785),
    PowStepDevice: dict(pow_gamma=1.0, pow_gamma_dtod=0.1, pow_up_down=0.0),
}


@pytest.mark.parametrize("cls", list(SPEC_DEFAULTS))
def test_defaults_match_spec(cls):
    obj = cls()
    for name, v in SPEC_DEFAULTS[cls].items():
        got = getattr(obj, name)
        if isinstance(v, float):
            assert got == pytest.approx(v, rel=1e-12), name
        else:
            assert got == v, name


def test_values_reach_the_cpp_struct():
    io = IOParameters(inp_res=1 / 254, out_noise=0.01, noise_management="constant", nm_thres=3.0,
                      w_noise_type=WeightNoiseType.PCM_READ, bound_management="iterative_worst_case").as_bindings()
    assert io.inp_res == pytest.approx(1 / 254) and io.out_noise == pytest.approx(0.01)
    assert io.noise_management == P.NoiseManagementType.CONSTANT and io.nm_thres == 3.0
    assert io.w_noise_type == P.WeightNoiseType.PCM_READ
    assert io.bound_management == P.BoundManagementType.ITERATIVE_WORST_CASE
    up = UpdateParameters(desired_bl=10, pulse_type=PulseType.DETERMINISTIC_IMPLICIT, sto_round=True).as_bindings()
    assert (up.desired_bl, up.pulse_type, up.sto_round) == (10, P.PulseType.DETERMINISTIC_IMPLICIT, True)
    dev = PowStepDevice(pow_gamma=2.5, pow_up_down_dtod=0.3, construction_seed=2**40).as_bindings()
    assert dev.pow_gamma == 2.5 and dev.pow_up_down_dtod == pytest.approx(0.3) and dev.construction_seed == 2**40


@pytest.mark.parametrize("py_enum", [NoiseManagementType, BoundManagementType, WeightNoiseType, PulseType])
def test_enums_match_by_name(py_enum):
    cpp_enum = getattr(P, py_enum.__name__)
    assert {m.name for m in py_enum} == set(cpp_enum.__members__)


def test_string_enum_values_are_case_insensitive():
    assert IOParameters(noise_management="abs_max").noise_management is NoiseManagementType.ABS_MAX
    assert UpdateParameters(pulse_type="Stochastic").pulse_type is PulseType.STOCHASTIC
