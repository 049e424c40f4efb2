"""Fleetkeeper: open-source IoT device management."""

__version__ = "0.1.0"
