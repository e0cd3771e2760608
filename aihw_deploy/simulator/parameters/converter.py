"""One generic converter from the parameter dataclasses to the C++ structs of ``rpu_base``."""

from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from typing import Any, Dict, Type


def _check_value(owner: str, name: str, value: Any, default: Any) -> Any:
    """Type-checks one field value against the type of its default."""
    where = f"{owner}.{name}"
    if isinstance(default, Enum):
        if isinstance(value, str):
            try:
                return type(default)[value.upper()]
            except KeyError:
                names = ", ".join(m.name for m in type(default))
                raise ValueError(f"{where}: unknown option {value!r} (expected one of {names})") from None
        if not isinstance(value, type(default)):
            raise TypeError(f"{where}: expected a {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected a bool, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an int, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    return value


def to_bindings(obj: Any, cpp_cls: Type, extra: Dict[str, Any] = None) -> Any:
    """Returns a ``cpp_cls`` instance with every field of dataclass ``obj`` copied onto it.

    Raises ``ValueError`` for a field the C++ struct does not know, ``TypeError``/``ValueError``
    for a value of the wrong type or range (the message names ``Class.field``).
    """
    if not is_dataclass(obj):
        raise TypeError(f"expected a parameter dataclass, got {type(obj).__name__}")
    owner = type(obj).__name__
    out = cpp_cls()
    values = {f.name: getattr(obj, f.name) for f in fields(obj) if not f.name.startswith("_")}
    values.update(extra or {})
    for name, value in values.items():
        if not hasattr(out, name):
            raise ValueError(f"{owner}.{name}: field not supported by the simulator core")
        default = getattr(out, name)
        if isinstance(value, Enum):
            cpp_enum = type(default)
            try:
                value = getattr(cpp_enum, value.name)
            except AttributeError:
                raise ValueError(f"{owner}.{name}: option {value.name} not supported") from None
        try:
            setattr(out, name, value)
        except TypeError:
            raise TypeError(f"{owner}.{name}: cannot use value {value!r}") from None
    if hasattr(out, "validate"):
        msg = out.validate()
        if msg:
            raise ValueError(f"{owner}: {msg}")
    return out


def validate_fields(obj: Any) -> None:
    """Checks the types of all fields of a dataclass against its defaults (in place)."""
    cls = type(obj)
    for f in fields(obj):
        default = f.default
        if default is MISSING or default is None or f.name.startswith("_"):
            continue
        setattr(obj, f.name, _check_value(cls.__name__, f.name, getattr(obj, f.name), default))
