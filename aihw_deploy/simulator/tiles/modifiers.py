"""Training-time weight modifiers, clipping and remapping of hardware-aware training (SPEC §4.4).

These act on the *digital* reference weights in PyTorch; the chip physics (IO pipeline, PCM
programming, drift) stays in rpucuda."""

import torch
from torch import Tensor

from ..configs.inference_parameters import (
    WeightClipParameter,
    WeightClipType,
    WeightModifierParameter,
    WeightModifierType,
    WeightRemapParameter,
    WeightRemapType,
)

# PCM programming-noise polynomial of SPEC §4.2 at g_max = 25 µS (used by PCM_NOISE).
_PCM_COEFF = (0.26348, 1.9650, -1.1731)
_PCM_GMAX = 25.0


def modify_weights(w: Tensor, p: WeightModifierParameter) -> Tensor:
    """Returns a perturbed copy of ``w`` (same shape).  With ``wmax`` = max|w| (or
    ``assumed_wmax``):

    - ADD_NORMAL: w + std_dev·wmax·ξ;  MULT_NORMAL: w·(1 + std_dev·ξ)
    - DISCRETIZE: w rounded to multiples of res·wmax;  DISCRETIZE_ADD_NORMAL: then + std_dev·wmax·ξ
    - POLY: w + std_dev·wmax·(c0 + c1|w|/wmax + c2 (w/wmax)²)·ξ with ``coeffs``
    - PCM_NOISE: w + std_dev·wmax·(c0 + c1 g + c2 g²)/25·ξ with g = |w|/wmax and the
      programming-noise coefficients of SPEC §4.2 (σ_prog relative to g_max = 25 µS)
    - DROP_CONNECT: each weight set to 0 with probability pdrop
    """
    t = p.type
    if t == WeightModifierType.NONE:
        return w
    wmax = w.abs().max() if p.rel_to_actual_wmax else torch.tensor(float(p.assumed_wmax))
    wmax = torch.clamp(wmax, min=1e-12)
    if t == WeightModifierType.ADD_NORMAL:
        return w + p.std_dev * wmax * torch.randn_like(w)
    if t == WeightModifierType.MULT_NORMAL:
        return w * (1.0 + p.std_dev * torch.randn_like(w))
    if t in (WeightModifierType.DISCRETIZE, WeightModifierType.DISCRETIZE_ADD_NORMAL):
        out = w
        if p.res > 0:
            res = p.res if p.res <= 1 else 1.0 / p.res
            step = res * wmax
            out = torch.round(w / step) * step
        if t == WeightModifierType.DISCRETIZE_ADD_NORMAL:
            out = out + p.std_dev * wmax * torch.randn_like(w)
        return out
    if t == WeightModifierType.POLY:
        c0, c1, c2 = (list(p.coeffs) + [0.0, 0.0, 0.0])[:3]
        rel = w.abs() / wmax
        return w + p.std_dev * wmax * (c0 + c1 * rel + c2 * rel * rel) * torch.randn_like(w)
    if t == WeightModifierType.PCM_NOISE:
        g = w.abs() / wmax
        sig = (_PCM_COEFF[0] + _PCM_COEFF[1] * g + _PCM_COEFF[2] * g * g)  # in units of g_max/25 µS
        return w + p.std_dev * wmax * (sig / _PCM_GMAX) * torch.randn_like(w)
    if t == WeightModifierType.DROP_CONNECT:
        keep = (torch.rand_like(w) >= p.pdrop).to(w.dtype)
        return w * keep
    raise ValueError(f"WeightModifierParameter.type: unsupported {t}")


def clip_weights_(w: Tensor, p: WeightClipParameter) -> None:
    """Clips ``w`` in place (see :class:`WeightClipParameter`)."""
    if p.type == WeightClipType.NONE:
        return
    if p.type == WeightClipType.FIXED_VALUE:
        bound = float(p.fixed_value)
    elif p.type == WeightClipType.LAYER_GAUSSIAN:
        bound = float(p.sigma * w.std())
    elif p.type == WeightClipType.AVERAGE_CHANNEL_MAX:
        bound = float(w.abs().max(dim=1).values.mean())
    else:  # pragma: no cover
        raise ValueError(f"WeightClipParameter.type: unsupported {p.type}")
    w.clamp_(-bound, bound)


def remap_weights_(w: Tensor, scale: Tensor, p: WeightRemapParameter) -> None:
    """Rescales ``w`` in place so that max|w| (layer or per row) is ``remapped_wmax``, moving
    the factor into the digital output ``scale`` [out] so the layer's function is unchanged."""
    if p.type == WeightRemapType.NONE:
        return
    if p.type == WeightRemapType.LAYERWISE_SYMMETRIC:
        m = w.abs().max().clamp(min=1e-12).expand(w.shape[0])
    else:
        m = w.abs().max(dim=1).values.clamp(min=1e-12)
    f = p.remapped_wmax / m
    w.mul_(f[:, None])
    scale.div_(f)
