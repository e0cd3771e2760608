"""Optimizers for analog models."""

from .analog_optimizer import AnalogSGD

__all__ = ["AnalogSGD"]
