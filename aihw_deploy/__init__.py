"""aihw-deploy: analog in-memory-computing hardware simulation for PyTorch, with deployment
to onnxruntime.

Layers (see README "Layout"): ``aihw_deploy.nn`` / ``aihw_deploy.optim`` (PyTorch layer),
``aihw_deploy.simulator`` (tiles, configs, parameters), ``aihw_deploy.simulator.rpu_base``
(pybind11 bindings of the C++ core ``rpucuda``), ``aihw_deploy.inference`` (noise models,
drift evaluation), ``aihw_deploy.export`` / ``aihw_deploy.runtime`` (ONNX and onnxruntime).
"""

__version__ = "0.1.0"

# Registers torch.ops.aihw.analog_mvm / analog_conv, so that saved .pt2 / TorchScript programs
# that contain them load after ``import aihw_deploy``.
from . import ops  # noqa: E402,F401
