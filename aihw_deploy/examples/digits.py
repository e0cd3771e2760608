"""Digits (8x8 images, 10 classes) from scikit-learn: data split, models, training loop.

Split: inputs / 16, 1400 train / 397 test, ``random_state=0``.  Models: MLP 64-128-10 and a
small LeNet-style CNN, analog through ``rpu_config`` (None = digital torch layers).
"""

import time
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..nn import AnalogConv2d, AnalogLinear, AnalogSequential
from ..optim import AnalogSGD


def load_digits_split() -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(x_train [1400, 64], y_train [1400], x_test [397, 64], y_test [397])``."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the digits example needs scikit-learn (pip install scikit-learn)") from exc
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    xtr, xte, ytr, yte = train_test_split(x, data.target, train_size=1400, test_size=397, random_state=0)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long())


def build_mlp(rpu_config=None, analog: bool = True) -> nn.Module:
    """MLP 64-128-10 (ReLU hidden layer)."""
    if not analog:
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return AnalogSequential(AnalogLinear(64, 128, rpu_config=rpu_config), nn.ReLU(),
                            AnalogLinear(128, 10, rpu_config=rpu_config))


class _Reshape(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], 1, 8, 8)


def build_lenet(rpu_config=None, analog: bool = True) -> nn.Module:
    """LeNet-style CNN for 8x8 inputs: conv(1->16, 3x3) - tanh - maxpool - conv(16->32, 3x3) - tanh
    - linear(128->10).  Input [N, 64] (reshaped inside)."""
    conv = (lambda *a, **k: AnalogConv2d(*a, rpu_config=rpu_config, **k)) if analog else nn.Conv2d
    lin = (lambda *a: AnalogLinear(*a, rpu_config=rpu_config)) if analog else nn.Linear
    layers = [_Reshape(), conv(1, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), conv(16, 32, 3, padding=1),
              nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), lin(128, 10)]
    return AnalogSequential(*layers) if analog else nn.Sequential(*layers)


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int = 30, batch_size: int = 32, lr: float = 0.3,
          seed: int = 0, verbose: bool = False, optimizer: Optional[torch.optim.Optimizer] = None) -> float:
    """Cross-entropy training with AnalogSGD (mini-batches shuffled by ``seed``).  Returns the
    wall time in seconds."""
    opt = optimizer or AnalogSGD(model.parameters(), lr=lr)
    if isinstance(opt, AnalogSGD):
        opt.regroup_param_groups(model)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if verbose:
            print(f"  epoch {epoch + 1:3d}/{epochs}  loss {total / x.shape[0]:.4f}", flush=True)
    return time.perf_counter() - t0


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of correctly classified samples (eval mode)."""
    was = model.training
    model.eval()
    pred = model(x).argmax(1)
    model.train(was)
    return float((pred == y).float().mean())
