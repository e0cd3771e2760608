"""Real training on scikit-learn's digits (slow): accuracy thresholds of the PyTorch-layer issue."""

import pytest
import torch

from aihw_deploy.examples.digits import accuracy, build_lenet, build_mlp, load_digits_split, train
from aihw_deploy.simulator.configs import (ConstantStepDevice, FloatingPointRPUConfig, InferenceRPUConfig,
                                           SingleRPUConfig)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.mark.parametrize("name,make,threshold", [
    ("floating point", lambda: build_mlp(FloatingPointRPUConfig()), 0.96),
    ("ConstantStep", lambda: build_mlp(SingleRPUConfig(device=ConstantStepDevice())), 0.95),
    ("InferenceRPUConfig", lambda: build_mlp(InferenceRPUConfig()), 0.955),
    ("LeNet InferenceRPUConfig", lambda: build_lenet(InferenceRPUConfig()), 0.93),
])
def test_digits_accuracy(digits, name, make, threshold):
    xtr, ytr, xte, yte = digits
    torch.manual_seed(0)
    model = make()
    train(model, xtr, ytr, epochs=30, batch_size=32)
    acc = accuracy(model, xte, yte)
    assert acc >= threshold, f"{name}: test accuracy {acc:.4f} < {threshold}"


def test_digits_split_shapes(digits):
    xtr, ytr, xte, yte = digits
    assert xtr.shape == (1400, 64) and xte.shape == (397, 64)
    assert float(xtr.max()) <= 1.0 and float(xtr.min()) >= 0.0
