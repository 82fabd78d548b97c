"""What SocketCAN error frames say about a bus: error classes, the controller's state, its counters.

The kernel reports CAN errors as error frames (linux/can/error.h): the id carries the error class
bits, the payload the details (byte 1 the controller's status, bytes 6 and 7 the transmit and
receive error counters where the driver reports them). A telematics engineer reading a fleet's
status wants the health of each bus, not a stream of error frames: how many of each class, and
whether the controller is error active, warning, passive or off the bus.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# error classes: the bits of an error frame's id (CAN_ERR_*)
ERROR_CLASSES = {
    0x001: "tx_timeout", 0x002: "lost_arbitration", 0x004: "controller", 0x008: "protocol",
    0x010: "transceiver", 0x020: "no_ack", 0x040: "bus_off", 0x080: "bus_error", 0x100: "restarted",
}
CAN_ERR_CRTL, CAN_ERR_BUSOFF, CAN_ERR_RESTARTED, CAN_ERR_CNT = 0x004, 0x040, 0x100, 0x200
COUNTED = (*ERROR_CLASSES.values(), "controller_overflow")  # every key of `errors`, zeros included
# the controller's status in byte 1 of a CAN_ERR_CRTL frame (CAN_ERR_CRTL_*)
CRTL_RX_OVERFLOW, CRTL_TX_OVERFLOW = 0x01, 0x02
CRTL_WARNING = 0x04 | 0x08   # RX or TX error counter reached the warning level (96)
CRTL_PASSIVE = 0x10 | 0x20   # RX or TX error counter reached the error-passive level (128)
CRTL_ACTIVE = 0x40           # back to error active

ERROR_ACTIVE, ERROR_WARNING, ERROR_PASSIVE, BUS_OFF = "error_active", "error_warning", "error_passive", "bus_off"


class BusHealth:
    """Error frames of one bus, summed up: counts per class, the controller's state and counters."""

    __slots__ = ("counts", "controller", "tx_errors", "rx_errors")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.controller = ERROR_ACTIVE
        self.tx_errors: int | None = None  # the controller's error counters, when the driver reports them
        self.rx_errors: int | None = None

    def note(self, error_class: int, data: bytes) -> None:
        """Count one error frame (`error_class`: its id without flags) and follow the controller's state."""
        for bit, name in ERROR_CLASSES.items():
            if error_class & bit:
                self.counts[name] += 1
        status = data[1] if error_class & CAN_ERR_CRTL and len(data) > 1 else 0
        # CAN_ERR_CNT flags the counters since Linux 6.0; drivers of older kernels fill them in
        # controller-state frames without it (zeros there mean "not reported")
        if len(data) >= 8 and (error_class & CAN_ERR_CNT or (error_class & CAN_ERR_CRTL and (data[6] or data[7]))):
            self.tx_errors, self.rx_errors = data[6], data[7]
        if error_class & CAN_ERR_BUSOFF:
            self.controller = BUS_OFF
        elif error_class & CAN_ERR_RESTARTED:
            self.restarted()
        elif status & CRTL_ACTIVE:
            self.controller = ERROR_ACTIVE
        elif status & CRTL_PASSIVE:
            self.controller = ERROR_PASSIVE
        elif status & CRTL_WARNING:  # the new state, also on the way down from passive
            self.controller = ERROR_WARNING
        if status & (CRTL_RX_OVERFLOW | CRTL_TX_OVERFLOW):
            self.counts["controller_overflow"] += 1

    def restarted(self) -> None:
        """The controller left bus-off, restarted (an error frame says so) or with the interface
        brought up again (no error frame says so): error active, the counters start afresh."""
        self.controller = ERROR_ACTIVE
        if self.tx_errors is not None:
            self.tx_errors = self.rx_errors = 0

    def counts_seen(self) -> dict[str, int]:
        return {name: n for name, n in self.counts.items() if n}

    def as_dict(self) -> dict[str, Any]:
        """For status and the twin; `errors` always has every key, so a twin's merge patch never
        keeps a count of an earlier run that this run has not seen."""
        return {"controller": self.controller, "errors": {name: self.counts[name] for name in COUNTED},
                "tx_error_counter": self.tx_errors, "rx_error_counter": self.rx_errors}
