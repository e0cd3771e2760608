"""Accuracy of programmed chips over time: :func:`evaluate_drift` and its :class:`DriftTable`.

For each repeat ``r`` every model is programmed onto a fresh chip (``seed + r*1000``: programming
noise and drift exponents, SPEC §4.1-4.2), then read at each inference time (drift, 1/f read
noise and drift compensation, SPEC §4.2-4.3) and evaluated on the data.  The table holds the
mean and standard deviation over the repeats of the metric (classification accuracy by
default) per model and time.
"""

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .chip import _inference_tiles, drift_analog_weights, program_analog_weights

DEFAULT_TIMES = (1.0, 3600.0, 86400.0, 2592000.0, 31536000.0)
SEED_STRIDE = 1000  # repeat r programs with seed + r * SEED_STRIDE (tile i adds i)

_UNITS = (("y", 31536000.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0))


def format_time(t: float) -> str:
    """A short human label of ``t`` seconds: 1 s, 1 h, 1 d, 30 d, 1 y, 2.5 h, ..."""
    t = float(t)
    if t == 0:
        return "0 s"
    for unit, sec in _UNITS:
        if t >= sec:
            return f"{t / sec:.3g} {unit}"
    return f"{t:.3g} s"


@dataclass
class DriftTable:
    """Result of :func:`evaluate_drift`.

    ``rows``: one dict per (model, time) in evaluation order, with keys ``model`` (label),
    ``t_inference`` (seconds), ``mean`` and ``std`` (population std over the repeats) of the
    metric.  ``values[label]`` is the raw array ``[len(times), repeats]``.
    """

    rows: List[Dict[str, Any]]
    times: List[float]
    models: List[str]
    repeats: int
    seed: int
    metric: str = "accuracy"
    values: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def percent(self) -> bool:
        """Whether the metric is the default accuracy (printed in %)."""
        return self.metric == "accuracy"

    def get(self, model: str, t_inference: float) -> Dict[str, Any]:
        """The row of ``model`` (label) at ``t_inference`` seconds."""
        for row in self.rows:
            if row["model"] == model and row["t_inference"] == float(t_inference):
                return row
        raise KeyError(f"no row for model {model!r} at t_inference={t_inference!r}")

    def to_text(self) -> str:
        """Aligned table: one line per model, one column per time ("mean ± std")."""
        scale = 100.0 if self.percent else 1.0

        def cell(row):
            if self.percent:
                return f"{row['mean'] * scale:.2f} ± {row['std'] * scale:.2f}"
            return f"{row['mean']:.4g} ± {row['std']:.2g}"

        unit = " (%)" if self.percent else ""
        header = [f"{self.metric}{unit}"] + [format_time(t) for t in self.times]
        lines = [header]
        for label in self.models:
            lines.append([label] + [cell(self.get(label, t)) for t in self.times])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for j, line in enumerate(lines):
            text = line[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(line[1:], widths[1:]))
            out.append(text.rstrip())
            if j == 0:
                out.append("-" * len(out[0]))
        out.append(f"({self.repeats} repeat{'s' if self.repeats != 1 else ''}: chips programmed with seeds "
                   f"{self.seed} + r*{SEED_STRIDE}; mean ± std over the repeats)")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, path: Union[str, os.PathLike], title: Optional[str] = None) -> Path:
        """Writes a PNG: the metric against time after programming on a log axis, error bars =
        std over the repeats, one curve per model.  The file is written atomically (temporary
        file in the same folder, then renamed)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        scale = 100.0 if self.percent else 1.0
        fig = Figure(figsize=(6.4, 4.4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        order = np.argsort(self.times, kind="stable")
        xs = np.asarray(self.times, dtype=float)[order]
        n = len(self.models)
        for i, label in enumerate(self.models):
            means = np.array([self.get(label, t)["mean"] for t in self.times])[order] * scale
            stds = np.array([self.get(label, t)["std"] for t in self.times])[order] * scale
            # Curves side by side (0.03 decade apart) so that their error bars stay readable.
            shift = 10.0 ** (0.03 * (i - (n - 1) / 2)) if xs.min() > 0 else 1.0
            ax.errorbar(xs * shift, means, yerr=stds, marker="o", markersize=4, capsize=3, linewidth=1.5,
                        label=label)
        if xs.min() > 0:
            ax.set_xscale("log")
        else:  # a time 0 cannot sit on a log axis
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(xs)
        ax.set_xticklabels([format_time(t) for t in xs])
        ax.xaxis.set_minor_locator(_null_locator())
        ax.set_xlabel("time after programming")
        ax.set_ylabel(f"{self.metric} (%)" if self.percent else self.metric)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        ax.set_title(title if title is not None else
                     f"{self.metric} after drift ({self.repeats} programmed chip{'s' if self.repeats != 1 else ''}"
                     " per point)")
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fig.savefig(fh, format="png", dpi=120)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path


def _null_locator():
    from matplotlib.ticker import NullLocator

    return NullLocator()


# -- argument normalization ----------------------------------------------------------------------

def _models(model: Any, labels: Any) -> Dict[str, nn.Module]:
    if isinstance(model, nn.Module):
        items = [("model", model)]
        if labels is not None:
            labels = [labels] if isinstance(labels, str) else list(labels)
    elif isinstance(model, dict):
        items = [(str(k), v) for k, v in model.items()]
    elif isinstance(model, (list, tuple)):
        items = [(f"model {i}", v) for i, v in enumerate(model)]
    else:
        raise TypeError(f"model: expected a torch.nn.Module, or a list or dict of them, got {type(model).__name__}")
    if not items:
        raise ValueError("model: no model given (empty list or dict)")
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else [str(v) for v in labels]
        if len(labels) != len(items):
            raise ValueError(f"labels: expected {len(items)} label(s), one per model, got {len(labels)}")
        items = [(lab, m) for lab, (_, m) in zip(labels, items)]
    if len({lab for lab, _ in items}) != len(items):
        raise ValueError("labels: model labels must be unique")
    for lab, m in items:
        where = "" if len(items) == 1 else f" ({lab!r})"
        if not isinstance(m, nn.Module):
            raise TypeError(f"model{where}: expected a torch.nn.Module, got {type(m).__name__}")
        if next(_inference_tiles(m), None) is None:
            raise ValueError(f"model has no InferenceRPUConfig layers{where}: evaluate_drift needs analog layers "
                             "built with InferenceRPUConfig (see convert_to_analog)")
    return dict(items)


def _times(times: Any) -> List[float]:
    if isinstance(times, (int, float)) and not isinstance(times, bool):
        times = [times]
    try:
        vals = [float(t) for t in times]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"times: expected a sequence of seconds, got {times!r}") from exc
    if not vals:
        raise ValueError("times: at least one inference time is needed")
    for t in vals:
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"times: every inference time must be a finite number of seconds >= 0, got {t!r}")
    return vals


def _is_array(v: Any) -> bool:
    return isinstance(v, (Tensor, np.ndarray))


def _as_x(x: Any, i: int) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"data: batch {i}: inputs must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"data: batch {i}: inputs must be floating point, got {x.dtype}")
    return x.to(torch.float32)


def _as_y(y: Any, i: int) -> Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor):
        raise TypeError(f"data: batch {i}: targets must be a torch.Tensor, got {type(y).__name__}")
    return y


def _data(data: Any) -> Iterable:
    """A re-iterable source of (x, y) batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_array(v) for v in data):
        return [tuple(data)]
    if _is_array(data) or isinstance(data, (str, bytes, dict)):
        raise TypeError(f"data: expected an (x, y) tuple of tensors or an iterable of (x, y) batches, "
                        f"got {type(data).__name__}")
    try:
        it = iter(data)
    except TypeError as exc:
        raise TypeError(f"data: expected an (x, y) tuple of tensors or an iterable of (x, y) batches, "
                        f"got {type(data).__name__}") from exc
    if it is data:  # a one-shot iterator (generator): keep its batches for all repeats
        return list(it)
    return data


def _accuracy_counts(out: Tensor, y: Tensor, i: int) -> Tuple[int, int]:
    if out.dim() != 2:
        raise ValueError(f"data: batch {i}: the model output has shape {tuple(out.shape)}; the default "
                         "accuracy metric needs class scores [N, classes] (pass metric= otherwise)")
    if y.dim() == 2 and tuple(y.shape) == tuple(out.shape):
        y = y.argmax(1)  # one-hot / probability targets
    if y.dim() != 1 or y.shape[0] != out.shape[0]:
        raise ValueError(f"data: batch {i}: targets of shape {tuple(y.shape)} do not match the model output "
                         f"{tuple(out.shape)} (expected class labels [{out.shape[0]}])")
    if y.is_floating_point():
        raise ValueError(f"data: batch {i}: class-label targets must be integers, got {y.dtype}")
    return int((out.argmax(1) == y).sum()), int(y.shape[0])


def _evaluate(model: nn.Module, batches: Iterable, metric: Optional[Callable]) -> float:
    correct = total = 0
    outs: List[Tensor] = []
    tgts: List[Tensor] = []
    n = -1
    for n, item in enumerate(batches):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(f"data: batch {n} is not an (x, y) pair (got {type(item).__name__})")
        x, y = _as_x(item[0], n), _as_y(item[1], n)
        try:
            out = model(x)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ValueError(f"data: batch {n} with inputs of shape {tuple(x.shape)} does not fit the model: {exc}") from exc
        if metric is None:
            c, t = _accuracy_counts(out, y, n)
            correct += c
            total += t
        else:
            outs.append(out.detach())
            tgts.append(y)
    if n < 0:
        raise ValueError("data: yielded no batches")
    if metric is None:
        if total == 0:
            raise ValueError("data: yielded no samples")
        return correct / total
    value = metric(torch.cat(outs) if len(outs) > 1 else outs[0], torch.cat(tgts) if len(tgts) > 1 else tgts[0])
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric: must return a number (float), got {type(value).__name__}") from exc


# -- saving and restoring what the evaluation touches -------------------------------------------

_CHIP_ATTRS = ("programmed", "program_seed", "t_inference", "chip_weights", "alpha", "reference", "call", "_comp")


class _Restore:
    """Remembers train/eval flags, chip state and noise counters of a model's tiles."""

    def __init__(self, model: nn.Module):
        from ..nn.modules.base import AnalogLayerBase

        self.flags = [(m, m.training) for m in model.modules()]
        self.layers = [m for m in model.modules() if isinstance(m, AnalogLayerBase)]
        self.tiles = [(t, {a: getattr(t, a, None) for a in _CHIP_ATTRS}) for t in _inference_tiles(model)]
        self.calls = [(t, t.call) for layer in self.layers for t in layer._tiles]

    def restore(self) -> None:
        for m, flag in self.flags:
            m.training = flag
        for layer in self.layers:
            for t in layer._tiles:
                if hasattr(t, "training"):
                    t.training = layer.training
        for t, saved in self.tiles:
            for a, v in saved.items():
                setattr(t, a, v)
        for t, c in self.calls:
            t.call = c


def _set_compensation(model: nn.Module, compensation: Optional[bool]) -> None:
    if compensation is None:
        return
    from ..simulator import rpu_base

    kinds = rpu_base.inference.DriftCompensationType
    for t in _inference_tiles(model):
        if not compensation:
            t._comp = kinds.NONE
        elif t._comp == kinds.NONE:
            t._comp = kinds.GLOBAL


# -- the evaluation ------------------------------------------------------------------------------

def evaluate_drift(model: Union[nn.Module, Sequence[nn.Module], Dict[str, nn.Module]],
                   data: Any,
                   times: Sequence[float] = DEFAULT_TIMES,
                   repeats: int = 10,
                   seed: int = 0,
                   metric: Optional[Callable[[Tensor, Tensor], float]] = None,
                   compensation: Optional[bool] = None,
                   plot: Optional[Union[str, os.PathLike]] = None,
                   labels: Optional[Union[str, Sequence[str]]] = None,
                   progress: bool = True,
                   title: Optional[str] = None) -> DriftTable:
    """Accuracy (or ``metric``) of programmed chips after drift, mean and std over repeats.

    Args:
        model: a module with InferenceRPUConfig layers, or a list or dict (label -> module) of
            them (one table line and one curve each).
        data: an ``(x, y)`` tuple of tensors, or an iterable of ``(x, y)`` batches (e.g. a
            DataLoader; it is iterated once per repeat and time).
        times: inference times in seconds after programming (finite, >= 0); default 1 s, 1 h,
            1 d, 30 d, 1 y.
        repeats: number of chips programmed per model; repeat ``r`` uses
            ``program_analog_weights(model, seed=seed + r*1000)``.
        seed: base seed (same seed: same chips, same table).
        metric: ``metric(outputs, targets) -> float`` evaluated once on the outputs and targets of
            all batches concatenated; default: classification accuracy (argmax of the outputs
            against integer labels, or against the argmax of one-hot targets).
        compensation: None uses each layer's ``drift_compensation``; False switches drift
            compensation off; True uses the configured one, or global compensation for
            layers configured without.
        plot: path of a PNG to write (metric against time on a log axis, error bars = std).
        labels: model labels (default "model", "model 0", ... or the dict keys).
        progress: show a tqdm progress bar when the work is large (more than 10 evaluations).
        title: title of the plot.

    Returns:
        :class:`DriftTable` (``print(table)`` shows the aligned table).

    The models are evaluated in eval mode without gradients; afterwards their train/eval
    modes, chip state (programmed or not, time, alpha) and noise counters are as before.
    """
    models = _models(model, labels)
    tvals = _times(times)
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats: must be an int >= 1, got {repeats!r}")
    repeats = int(repeats)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an int >= 0, got {seed!r}")
    seed = int(seed)
    if metric is not None and not callable(metric):
        raise TypeError(f"metric: expected a callable metric(outputs, targets) -> float, got {type(metric).__name__}")
    if compensation is not None and not isinstance(compensation, bool):
        raise TypeError(f"compensation: expected None, True or False, got {compensation!r}")
    batches = _data(data)
    metric_name = "accuracy" if metric is None else getattr(metric, "__name__", type(metric).__name__)

    n_steps = len(models) * repeats * len(tvals)
    bar = None
    if progress and n_steps > 10:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, desc="evaluate_drift", unit="eval", leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None

    values = {label: np.zeros((len(tvals), repeats)) for label in models}
    try:
        for label, m in models.items():
            saved = _Restore(m)  # each model starts from its own state, and gets it back
            try:
                with torch.no_grad():
                    m.eval()
                    _set_compensation(m, compensation)
                    for r in range(repeats):
                        program_analog_weights(m, seed=seed + r * SEED_STRIDE)
                        for j, t in enumerate(tvals):
                            drift_analog_weights(m, t)
                            values[label][j, r] = _evaluate(m, batches, metric)
                            if bar is not None:
                                bar.update(1)
            finally:
                saved.restore()
    finally:
        if bar is not None:
            bar.close()

    rows = []
    for label in models:
        for j, t in enumerate(tvals):
            v = values[label][j]
            rows.append({"model": label, "t_inference": t, "mean": float(v.mean()), "std": float(v.std())})
    table = DriftTable(rows=rows, times=tvals, models=list(models), repeats=repeats, seed=seed,
                       metric=metric_name, values=values)
    if plot is not None:
        table.plot(plot, title=title)
    return table
