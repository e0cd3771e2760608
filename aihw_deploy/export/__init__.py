"""Export of analog models: ONNX with ``ai.aihw`` custom operators (``to_onnx``; contract in
``ort_ops/README.md``), ``torch.export`` programs (``to_torch_export``) and TorchScript
(``to_torchscript``)."""

from ._attributes import DOMAIN, ExportError, io_attributes, layer_attributes
from ._fallback import analog_conv_function, analog_matmul_function, fallback_model
from ._onnx import export_onnx_model, to_onnx
from ._reference import reference_model
from ._torch import to_torch_export, to_torchscript

__all__ = ["to_onnx", "to_torch_export", "to_torchscript", "export_onnx_model", "ExportError", "DOMAIN",
           "fallback_model", "analog_matmul_function", "analog_conv_function", "layer_attributes",
           "io_attributes", "reference_model"]
