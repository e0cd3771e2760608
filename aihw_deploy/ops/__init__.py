"""``torch.library`` custom ops of the analog forward (``torch.ops.aihw.analog_mvm``,
``torch.ops.aihw.analog_conv``).  Importing ``aihw_deploy`` registers them, so a ``.pt2`` or
TorchScript file that contains them loads after ``import aihw_deploy``."""

from ._encoding import IO_FIELDS, decode_io, encode_io, encode_mapping
from ._ops import analog_conv, analog_mvm, conv_output_size, is_tracing

__all__ = ["analog_mvm", "analog_conv", "encode_io", "decode_io", "encode_mapping", "IO_FIELDS", "is_tracing",
           "conv_output_size"]
