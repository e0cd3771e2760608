"""Hardware-aware inference: PCM noise model, drift compensation, drift evaluation."""

from ..simulator.configs import GlobalDriftCompensation, PCMLikeNoiseModel, PerColumnDriftCompensation
from .chip import drift_analog_weights, program_analog_weights
from .evaluate import DriftTable, evaluate_drift, format_time

__all__ = ["PCMLikeNoiseModel", "GlobalDriftCompensation", "PerColumnDriftCompensation",
           "program_analog_weights", "drift_analog_weights", "evaluate_drift", "DriftTable", "format_time"]
