"""Digits end to end (slow): an MLP 64-128-10 trained hardware-aware with the defaults of
``InferenceRPUConfig`` (PCM noise model, global drift compensation) keeps >= 95% mean test
accuracy one year after programming, over 10 programmed chips (issue 4; the reference toolkit
reports 96.3% at 1 s and 95.6% after one year).

The test set has 397 samples, so one sample is 0.25%; with 10 chips the mean's standard error is
about 0.1% (chip-to-chip std ~0.3-0.5%).  Measured with this split: 96.2-96.6% after one year
for training seeds 0-4, so the 95% bound has a margin of > 10 standard errors.
"""

import os
import sys

import pytest
import torch

from aihw_deploy.examples.digits import build_mlp, load_digits_split, train
from aihw_deploy.inference import evaluate_drift
from aihw_deploy.simulator.configs import InferenceRPUConfig

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES = (1.0, 3600.0, 86400.0, 2592000.0, 31536000.0)


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_digits_split()


@pytest.mark.parametrize("train_seed", [0, 1])
def test_hwa_mlp_keeps_95_percent_after_one_year(digits, train_seed):
    xtr, ytr, xte, yte = digits
    torch.manual_seed(train_seed)
    model = build_mlp(InferenceRPUConfig())  # defaults: nothing tuned for this test
    train(model, xtr, ytr, epochs=30, batch_size=32, lr=0.3, seed=train_seed)
    table = evaluate_drift(model, (xte, yte), times=TIMES, repeats=10, seed=0, progress=False)
    print(table)
    one_year = table.get("model", 31536000.0)
    assert one_year["mean"] >= 0.95, str(table)
    assert table.get("model", 1.0)["mean"] >= 0.955, str(table)
    for row in table.rows:
        assert row["mean"] >= 0.95, str(table)


def test_drift_report_tool(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import drift_report
    finally:
        sys.path.pop(0)
    out = tmp_path / "drift.png"
    assert drift_report.main(["--repeats", "2", "--epochs", "5", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for label in ("HWA, global compensation", "HWA, no compensation", "no HWA, global compensation",
                  "no HWA, no compensation", "1 s", "1 y"):
        assert label in text
    assert out.read_bytes()[:4] == b"\x89PNG"
