"""vehicle-agent: CAN buses in, decoded and compressed telemetry out, steered by the device twin."""

__version__ = "0.1.0"
