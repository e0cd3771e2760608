"""Inference tile: hardware-aware training and inference on a programmed PCM chip (SPEC §4)."""

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ...ops import encode_io, encode_mapping
from .. import cuda, rpu_base
from .base import TileBase
from .modifiers import clip_weights_, modify_weights, remap_weights_


class InferenceTile(TileBase):
    """Reference weights are an ordinary parameter (trained with plain SGD on gradients from
    an IO-managed forward).  ``program()`` writes them onto a simulated PCM chip (programming
    noise, drift exponents) and ``drift(t)`` gives the chip's weights ``t`` seconds later.

    Forward: train mode uses the modifier copy of the weights; eval mode uses the drifted
    chip weights if programmed (times the drift-compensation ``alpha``), else the reference
    weights, always through the IO pipeline of ``rpu_config.forward``.
    """

    config_name = "InferenceRPUConfig"

    def __init__(self, out_size: int, in_size: int, rpu_config, analog_bias: bool = False):
        super().__init__(out_size, in_size, rpu_config, analog_bias)
        self._compile()
        self.training = True
        self.out_scaling = torch.ones(out_size)  # digital scale moved out by remapping
        self.programmed = None  # rpu_base.inference.ProgrammedWeights
        self.program_seed: Optional[int] = None
        self.t_inference: Optional[float] = None
        self.chip_weights: Optional[Tensor] = None  # weights at t_inference [out, cols]
        self.alpha: Optional[Tensor] = None
        self.reference: Optional[Tensor] = None  # compensation read-out after programming

    def _compile(self) -> None:
        cfg = self.rpu_config
        self._fwd = cfg.forward.as_bindings()
        self._bwd = cfg.backward.as_bindings()
        self._map = cfg.mapping.as_bindings()
        self._noise = cfg.noise_model.as_bindings() if cfg.noise_model is not None else None
        comp = cfg.drift_compensation
        kinds = rpu_base.inference.DriftCompensationType
        self._comp = {None: kinds.NONE, "none": kinds.NONE, "global": kinds.GLOBAL,
                      "per_column": kinds.PER_COLUMN}[None if comp is None else comp.kind]
        # Encoded forward IO / mapping: the primitive arguments of torch.ops.aihw.analog_mvm.
        self._fwd_code = encode_io(cfg.forward)
        self._map_code = encode_mapping(cfg.mapping)

    # -- compute ---------------------------------------------------------------------------------
    def _forward_weights(self) -> Tensor:
        cfg = self.rpu_config
        if self.training:
            return modify_weights(self.weight.detach(), cfg.modifier).contiguous()
        if self.chip_weights is not None:
            return self.chip_weights
        if cfg.modifier.enable_during_test:
            return modify_weights(self.weight.detach(), cfg.modifier).contiguous()
        return self.weight.detach()

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha if (not self.training and self.chip_weights is not None) else None
        if self.on_cuda:
            out = cuda.io_mvm(self._forward_weights(), x, self._fwd, self._map, alpha=alpha, seed=self.seed,
                              call=self.next_call())
        else:
            out = torch.empty(x.shape[0], self.out_size)
            rpu_base.tiles.io_mvm(self._forward_weights(), x, out, io=self._fwd, mapping=self._map,
                                  alpha=alpha, seed=self.seed, call=self.next_call())
        if self.rpu_config.remap.type.name != "NONE":
            out.mul_(self.out_scaling)
        return out

    def op_arguments(self, advance: bool = True) -> Dict[str, Any]:
        """Arguments of ``torch.ops.aihw.analog_mvm`` equivalent to :meth:`forward`: ``weight``
        [out, cols], ``alpha`` (None, [1] or [out]), ``io``/``mapping`` codes, ``seed``, ``call``
        (the tile's call counter advances unless ``advance`` is False, as while tracing) and
        ``out_scaling`` ([out], or None without remapping), applied after the product."""
        alpha = self.alpha if (not self.training and self.chip_weights is not None) else None
        return {"weight": self._forward_weights(), "alpha": alpha, "io": self._fwd_code, "mapping": self._map_code,
                "seed": int(self.seed), "call": self.next_call() if advance else int(self.call),
                "out_scaling": self.out_scaling if self.rpu_config.remap.type.name != "NONE" else None}

    def backward(self, d: Tensor) -> Tensor:
        if self.rpu_config.remap.type.name != "NONE":
            d = (d * self.out_scaling).contiguous()
        if self.on_cuda:
            return cuda.io_mvm(self.weight.detach(), d, self._bwd, self._map, bound_management=False, seed=self.seed,
                               call=self.next_call(), transposed=True)
        out = torch.empty(d.shape[0], self.weight.shape[1])
        rpu_base.tiles.io_mvm(self.weight.detach(), d, out, io=self._bwd, mapping=self._map,
                              bound_management=False, seed=self.seed, call=self.next_call(),
                              transposed=True)
        return out

    def weight_gradient_scale(self) -> Optional[Tensor]:
        """Per-row factor of the weight gradient (the remapping's digital scale)."""
        if self.rpu_config.remap.type.name != "NONE":
            return self.out_scaling
        return None

    # -- weights (effective: the tile weights times the remapping's digital output scale) ------
    def get_weights(self):
        """Returns the effective ``(weight [out, in], bias [out] or None)`` that the layer
        computes with: the tile weights times the digital output scale of remapping."""
        w, b = super().get_weights()
        if self.rpu_config.remap.type.name != "NONE":
            s = self.out_scaling.cpu()
            w = w * s[:, None]
            b = None if b is None else b * s
        return w, b

    def _weights_changed(self) -> None:
        # Weights written from outside are the effective weights: no digital scale on top.
        self.out_scaling = torch.ones(self.out_size, device=self.weight.device)

    def post_update_step(self) -> None:
        with torch.no_grad():
            clip_weights_(self.weight.data, self.rpu_config.clip)
            remap_weights_(self.weight.data, self.out_scaling, self.rpu_config.remap)

    # -- chip --------------------------------------------------------------------------------
    def program(self, seed: Optional[int] = None) -> None:
        """Programs the reference weights onto PCM devices (SPEC §4.1-4.2) and records the
        drift-compensation reference (SPEC §4.3)."""
        if self._noise is None:
            raise RuntimeError("program_analog_weights: rpu_config.noise_model is None")
        self.program_seed = int(self.seed if seed is None else seed)
        # Compensation reference and chip weights follow rpucuda's chip conventions
        # (chip_reference / chip_at), which the onnxruntime kernel uses too.
        if self.on_cuda:
            self.programmed = cuda.pcm_program(self.weight.detach().contiguous(), self._noise, self.program_seed)
            self.reference = cuda.chip_reference(self.programmed, self._noise, self.program_seed, self._fwd,
                                                 self._map, self._comp, self.seed)
        else:
            self.programmed = rpu_base.inference.pcm_program(self.weight.detach().contiguous(), self._noise,
                                                             self.program_seed)
            self.reference = torch.from_numpy(rpu_base.inference.chip_reference(
                self.programmed, self._noise, self.program_seed, self._fwd, self._map, self._comp, self.seed))
        self.drift(0.0)

    def drift(self, t_inference: float) -> None:
        """Sets the chip weights to their state ``t_inference`` seconds after programming
        (drift and a fresh read-noise sample) and updates ``alpha``."""
        t = float(t_inference)
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"drift_analog_weights: t_inference must be a finite number of seconds >= 0, got {t_inference!r}")
        if self.programmed is None:
            self.program()
        if self.on_cuda:
            self.chip_weights, self.alpha = cuda.chip_at(self.programmed, self._noise, t, self.program_seed, self._fwd,
                                                         self._map, self._comp, self.seed, self.reference)
        else:
            w, alpha = rpu_base.inference.chip_at(self.programmed, self._noise, t, self.program_seed, self._fwd,
                                                  self._map, self._comp, self.seed, self.reference)
            self.chip_weights = torch.from_numpy(w)
            self.alpha = torch.from_numpy(alpha)
        self.t_inference = t

    # -- state -------------------------------------------------------------------------------
    def get_state(self) -> Dict[str, Any]:
        state = super().get_state()
        state["out_scaling"] = self.out_scaling.cpu().clone()
        state["training"] = bool(self.training)
        if self.programmed is not None:
            state["programmed"] = _programmed_state(self.programmed)
            state["program_seed"] = int(self.program_seed)
            state["t_inference"] = float(self.t_inference)
            state["reference"] = self.reference.cpu().clone()
        return state

    def set_state(self, state: Dict[str, Any]) -> None:
        super().set_state(state)
        self.out_scaling = torch.as_tensor(state["out_scaling"], dtype=torch.float32).to(self.device).clone()
        self.training = bool(state.get("training", True))
        self.programmed = None
        self.chip_weights = None
        self.alpha = None
        if "programmed" in state:
            self.programmed = _programmed_from_state(state["programmed"], self.device)
            self.program_seed = int(state["program_seed"])
            self.reference = torch.as_tensor(state["reference"], dtype=torch.float32).to(self.device)
            self.drift(float(state["t_inference"]))

    def _moved(self, device: torch.device) -> None:
        super()._moved(device)
        self.out_scaling = self.out_scaling.to(device)
        if self.programmed is not None:
            # The same chip on the new device (its conductances and drift exponents move as
            # they are); the chip weights and alpha move too, so outputs stay the same chip's.
            self.programmed = _programmed_from_state(_programmed_state(self.programmed), device)
            self.reference = self.reference.to(device)
            self.chip_weights = self.chip_weights.to(device)
            self.alpha = self.alpha.to(device)

    def __getstate__(self) -> Dict[str, Any]:
        d = self.__dict__.copy()
        for k in ("_fwd", "_bwd", "_map", "_noise", "_comp", "_fwd_code", "_map_code", "programmed", "chip_weights", "alpha", "reference"):
            d.pop(k, None)
        d["_tile_state"] = self.get_state()
        return d

    def __setstate__(self, d: Dict[str, Any]) -> None:
        state = d.pop("_tile_state")
        self.__dict__.update(d)
        self._compile()
        self.set_state(state)
        self._register()


def _programmed_state(pw: Any) -> Dict[str, Any]:
    """Plain state (CPU tensors, scale) of a CPU or CUDA programmed chip."""
    return {k: (torch.as_tensor(v).cpu().clone() if hasattr(v, "shape") else float(v)) for k, v in pw.get_state().items()}


def _programmed_from_state(state: Dict[str, Any], device: torch.device) -> Any:
    if device.type == "cuda":
        return cuda.CudaProgrammedWeights.from_state(state, device)
    pw = rpu_base.inference.ProgrammedWeights()
    pw.set_state({k: (torch.as_tensor(v, dtype=torch.float32).cpu().contiguous().numpy() if hasattr(v, "shape") else v)
                  for k, v in state.items()})
    return pw
