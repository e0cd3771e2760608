"""Compact encodings of the parameter dataclasses as the primitive arguments of the torch ops.

The torch ops take the IO pipeline as a list of floats (``IO_FIELDS`` order; bools as 0/1 and
enums as the index of their member) and the tile mapping as ``[max_input_size,
max_output_size]``, so that ``torch.export`` / TorchScript record them as constants.
"""

from dataclasses import fields
from enum import Enum
from functools import lru_cache
from typing import List, Sequence, Tuple

from ..simulator.parameters import IOParameters, MappingParameter

IO_FIELDS: Tuple[str, ...] = tuple(f.name for f in fields(IOParameters))
_DEFAULT_IO = IOParameters()
_ENUMS = {name: type(getattr(_DEFAULT_IO, name)) for name in IO_FIELDS
          if isinstance(getattr(_DEFAULT_IO, name), Enum)}
_BOOLS = {name for name in IO_FIELDS if isinstance(getattr(_DEFAULT_IO, name), bool)}


def encode_io(io: IOParameters) -> List[float]:
    """``IOParameters`` -> list of ``len(IO_FIELDS)`` floats."""
    if not isinstance(io, IOParameters):
        raise TypeError(f"encode_io: expected IOParameters, got {type(io).__name__}")
    out = []
    for name in IO_FIELDS:
        v = getattr(io, name)
        if name in _ENUMS:
            out.append(float(list(_ENUMS[name]).index(v)))
        else:
            out.append(float(v))
    return out


def decode_io(values: Sequence[float]) -> IOParameters:
    """Inverse of :func:`encode_io` (raises ValueError for a malformed list)."""
    values = list(values)
    if len(values) != len(IO_FIELDS):
        raise ValueError(f"io: expected {len(IO_FIELDS)} values ({', '.join(IO_FIELDS)}), got {len(values)}")
    kw = {}
    for name, v in zip(IO_FIELDS, values):
        if name in _ENUMS:
            members = list(_ENUMS[name])
            i = int(v)
            if i != v or not 0 <= i < len(members):
                raise ValueError(f"io: {name} code {v!r} is not one of 0..{len(members) - 1}")
            kw[name] = members[i]
        elif name in _BOOLS:
            kw[name] = bool(v)
        else:
            kw[name] = float(v)
    return IOParameters(**kw)


@lru_cache(maxsize=256)
def io_bindings(values: Tuple[float, ...]):
    """The rpu_base IOParameters struct of an encoded list (cached: built once per config)."""
    return decode_io(values).as_bindings()


@lru_cache(maxsize=256)
def mapping_bindings(values: Tuple[int, ...]):
    if len(values) != 2 or any(int(v) < 1 for v in values):
        raise ValueError(f"mapping: expected [max_input_size, max_output_size] (positive ints), got {list(values)}")
    return MappingParameter(max_input_size=int(values[0]), max_output_size=int(values[1])).as_bindings()


def encode_mapping(mapping: MappingParameter) -> List[int]:
    return [int(mapping.max_input_size), int(mapping.max_output_size)]
