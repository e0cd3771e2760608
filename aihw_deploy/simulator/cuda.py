"""The adapter between torch CUDA tensors and rpucuda's CUDA twins (``rpu_base.cuda``).

Every function checks its tensors (float32, contiguous, on the same CUDA device, shapes), then
passes raw pointers, torch's current stream on that device and the device index to rpucuda, so
the work is ordered with the surrounding torch operations and no data is copied.  Outputs are
allocated with torch (its caching allocator).

Nothing here runs without a CUDA build of rpucuda and a GPU: :func:`available` says whether it
can, and :func:`require` raises :class:`~aihw_deploy.simulator.tiles.CudaError` with the reason.
"""

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from . import rpu_base


class CudaError(RuntimeError):
    """Raised when CUDA is requested but rpucuda was built without CUDA kernels (or no GPU)."""


def is_compiled() -> bool:
    """True when rpucuda was built with its CUDA twins."""
    return bool(rpu_base.cuda.is_compiled())


def available() -> bool:
    """True when CUDA tiles can run here: a CUDA build, torch with CUDA and a visible GPU."""
    return is_compiled() and torch.cuda.is_available() and rpu_base.cuda.device_count() > 0


def require(what: str = "CUDA") -> None:
    """Raises :class:`CudaError` naming why CUDA cannot be used."""
    if not is_compiled():
        raise CudaError(f"{what}: aihw-deploy was built without CUDA support "
                        "(rpu_base.cuda.is_compiled() is False; rebuild where nvcc is found, AIHW_WITH_CUDA=AUTO/ON)")
    if not torch.cuda.is_available():
        raise CudaError(f"{what}: torch sees no CUDA device (torch.cuda.is_available() is False)")
    if rpu_base.cuda.device_count() == 0:
        raise CudaError(f"{what}: rpucuda's CUDA runtime sees no GPU (driver missing or older than the CUDA "
                        "version rpucuda was built with)")


def _dev(t: Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def _stream(device: int) -> int:
    return int(torch.cuda.current_stream(device).cuda_stream)


def _check(fn: str, name: str, t: Tensor, device: torch.device, shape: Optional[Tuple[int, ...]] = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{fn}: {name} is on {t.device}, expected {device}")
    if not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def io_mvm(weight: Tensor, x: Tensor, io: Any, mapping: Any, bound_management: bool = True,
           alpha: Optional[Tensor] = None, seed: int = 0, call: int = 0, transposed: bool = False,
           out: Optional[Tensor] = None) -> Tensor:
    """The analog MVM of SPEC §1 on the GPU: ``weight [M, K]``, ``x [N, in]`` -> ``[N, out]``
    (in/out = K/M, or M/K when ``transposed``); ``alpha`` ``[1]`` or ``[out]``."""
    fn = "cuda.io_mvm"
    if weight.dim() != 2:
        raise ValueError(f"{fn}: weights must be 2-D, got shape {tuple(weight.shape)}")
    dev = weight.device
    _check(fn, "weights", weight, dev)
    m, k = weight.shape
    n_in, n_out = (m, k) if transposed else (k, m)
    if x.dim() != 2 or x.shape[1] != n_in:
        raise ValueError(f"{fn}: x must be [N, {n_in}], got shape {tuple(x.shape)}")
    _check(fn, "x", x, dev)
    if out is None:
        out = torch.empty(x.shape[0], n_out, device=dev)
    _check(fn, "out", out, dev, (x.shape[0], n_out))
    a_ptr, n_alpha = 0, 0
    if alpha is not None:
        alpha = alpha.reshape(-1)
        _check(fn, "alpha", alpha, dev)
        a_ptr, n_alpha = alpha.data_ptr(), alpha.numel()
    d = _dev(weight)
    rpu_base.cuda.io_mvm(weight.data_ptr(), m, k, bool(transposed), x.data_ptr(), x.shape[0], out.data_ptr(), io,
                         mapping, bool(bound_management), a_ptr, n_alpha, int(seed), int(call), _stream(d), d)
    return out


def exact_update(weight: Tensor, x: Tensor, d: Tensor, lr: float) -> None:
    """``weight -= lr * d^T x`` in place (``x [N, K]``, ``d [N, M]``)."""
    fn = "cuda.exact_update"
    dev = weight.device
    m, k = weight.shape
    _check(fn, "weights", weight, dev)
    _check(fn, "x", x, dev, (x.shape[0], k))
    _check(fn, "d", d, dev, (x.shape[0], m))
    i = _dev(weight)
    rpu_base.cuda.exact_update(weight.data_ptr(), m, k, x.data_ptr(), d.data_ptr(), x.shape[0], float(lr),
                               _stream(i), i)


def pulsed_update(weight: Tensor, x: Tensor, d: Tensor, lr: float, update: Any, device_parameters: Any,
                  device_arrays: Tensor, seed: int, call: int) -> None:
    """Pulsed update (SPEC §2) of ``weight [M, K]`` in place on devices ``device_arrays [M, K, 6]``."""
    fn = "cuda.pulsed_update"
    dev = weight.device
    m, k = weight.shape
    _check(fn, "weights", weight, dev)
    _check(fn, "x", x, dev, (x.shape[0], k))
    _check(fn, "d", d, dev, (x.shape[0], m))
    _check(fn, "device_arrays", device_arrays, dev, (m, k, 6))
    i = _dev(weight)
    rpu_base.cuda.pulsed_update(weight.data_ptr(), m, k, x.data_ptr(), d.data_ptr(), x.shape[0], float(lr), update,
                                device_parameters, device_arrays.data_ptr(), int(seed), int(call), _stream(i), i)


class CudaProgrammedWeights:
    """A programmed PCM chip in GPU memory: conductances (µS) and drift exponents, each
    ``[M, K]``, and the scale (µS per weight unit).  ``get_state`` has the keys of the CPU
    ``rpu_base.inference.ProgrammedWeights`` (CPU tensors), so checkpoints move between devices."""

    KEYS = ("g_plus", "g_minus", "nu_plus", "nu_minus")

    def __init__(self, tensors: Dict[str, Tensor], scale: float):
        self.t = tensors
        self.scale = float(scale)
        self.M, self.K = tensors["g_plus"].shape

    def pointers(self) -> Tuple[int, int, int, int]:
        return tuple(self.t[k].data_ptr() for k in self.KEYS)  # type: ignore[return-value]

    def get_state(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {k: self.t[k].detach().cpu() for k in self.KEYS}
        state["scale"] = self.scale
        return state

    @classmethod
    def from_state(cls, state: Dict[str, Any], device: torch.device) -> "CudaProgrammedWeights":
        t = {k: torch.as_tensor(state[k], dtype=torch.float32).to(device).contiguous() for k in cls.KEYS}
        return cls(t, float(state["scale"]))


def pcm_program(weight: Tensor, noise_model: Any, seed: int) -> CudaProgrammedWeights:
    """Programs ``weight [M, K]`` onto PCM pairs on the GPU (SPEC §4.1-4.2)."""
    fn = "cuda.pcm_program"
    dev = weight.device
    _check(fn, "weights", weight, dev)
    if not torch.isfinite(weight).all():
        raise ValueError(f"{fn}: weights contain NaN or Inf")
    m, k = weight.shape
    t = {key: torch.empty(m, k, device=dev) for key in CudaProgrammedWeights.KEYS}
    i = _dev(weight)
    scale = rpu_base.cuda.pcm_program(weight.data_ptr(), m, k, noise_model, int(seed), t["g_plus"].data_ptr(),
                                      t["g_minus"].data_ptr(), t["nu_plus"].data_ptr(), t["nu_minus"].data_ptr(),
                                      _stream(i), i)
    return CudaProgrammedWeights(t, scale)


def pcm_weights_at(pw: CudaProgrammedWeights, noise_model: Any, t_inference: float, seed: int, call: int) -> Tensor:
    """Chip weights ``[M, K]`` ``t_inference`` seconds after programming (drift, read noise)."""
    dev = pw.t["g_plus"].device
    out = torch.empty(pw.M, pw.K, device=dev)
    i = _dev(out)
    rpu_base.cuda.pcm_weights_at(pw.M, pw.K, pw.scale, *pw.pointers(), noise_model, float(t_inference), int(seed),
                                 int(call), out.data_ptr(), _stream(i), i)
    return out


def _n_ref(pw: CudaProgrammedWeights, comp_type: Any) -> int:
    return pw.M if comp_type == rpu_base.inference.DriftCompensationType.PER_COLUMN else 1


def chip_reference(pw: CudaProgrammedWeights, noise_model: Any, program_seed: int, io: Any, mapping: Any,
                   comp_type: Any, tile_seed: int) -> Tensor:
    """Drift-compensation reference of the freshly programmed chip (1 or M values)."""
    dev = pw.t["g_plus"].device
    ref = torch.ones(_n_ref(pw, comp_type), device=dev)
    i = _dev(ref)
    rpu_base.cuda.chip_reference(pw.M, pw.K, pw.scale, *pw.pointers(), noise_model, int(program_seed), io, mapping,
                                 comp_type, int(tile_seed), ref.data_ptr(), _stream(i), i)
    return ref


def chip_at(pw: CudaProgrammedWeights, noise_model: Any, t_inference: float, program_seed: int, io: Any,
            mapping: Any, comp_type: Any, tile_seed: int, ref: Tensor) -> Tuple[Tensor, Tensor]:
    """``(weights [M, K], alpha)`` of the chip ``t_inference`` seconds after programming."""
    dev = pw.t["g_plus"].device
    n = _n_ref(pw, comp_type)
    ref = ref.to(dev).reshape(-1).contiguous()
    if ref.numel() != n:
        raise ValueError(f"cuda.chip_at: ref must have {n} values, got {ref.numel()}")
    w = torch.empty(pw.M, pw.K, device=dev)
    alpha = torch.ones(n, device=dev)
    i = _dev(w)
    rpu_base.cuda.chip_at(pw.M, pw.K, pw.scale, *pw.pointers(), noise_model, float(t_inference), int(program_seed), io,
                          mapping, comp_type, int(tile_seed), ref.data_ptr(), w.data_ptr(), alpha.data_ptr(),
                          _stream(i), i)
    return w, alpha
