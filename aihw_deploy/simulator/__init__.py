"""Python simulator abstraction: tiles, RPU configs and parameters over ``rpu_base``."""

import sys as _sys

from ._native import rpu_base

# Make ``import aihw_deploy.simulator.rpu_base.cuda`` (etc.) work for the compiled submodules.
for _name in ("parameters", "tiles", "devices", "inference", "cuda"):
    _sys.modules[f"{__name__}.rpu_base.{_name}"] = getattr(rpu_base, _name)


def _default_threads() -> None:
    # One pool for rpucuda, sized like torch's (the cores the user gave PyTorch).
    try:
        import torch

        rpu_base.set_num_threads(max(1, torch.get_num_threads()))
    except ImportError:  # pragma: no cover
        pass


_default_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of threads of rpucuda's pool (default: ``torch.get_num_threads()``)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    rpu_base.set_num_threads(n)


def get_num_threads() -> int:
    """Number of threads of rpucuda's pool."""
    return rpu_base.get_num_threads()


__all__ = ["rpu_base", "set_num_threads", "get_num_threads"]
