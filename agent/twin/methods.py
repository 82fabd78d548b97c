"""Direct methods an operator can call on a vehicle, the same over every transport.

IoT Hub direct methods and the MQTT method topics both land here, so `flush`, `get_status` and
`set_log_level` answer identically whichever way the fleet talks to the car.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.logs import LEVELS
from agent.twin.guard import short

if TYPE_CHECKING:
    from agent.twin.control import Control

METHODS = ("flush", "get_status", "set_log_level", "list_campaigns", "trigger_campaign")
MAX_LOG_LEVEL_S = 86400  # a raised log level reverts within a day at the latest


def dispatch_method(control: Control, name: str, payload: Any) -> tuple[int, Any]:
    """Run a method; returns (status, payload) as the operator sees them (HTTP-style status codes)."""
    args = payload if isinstance(payload, dict) else {}
    if name == "flush":
        control.flush_now()
        return 200, {"flushed": True, "store_batches": control.status().store.batches}
    if name == "get_status":
        return 200, control.status().to_dict()
    if name == "set_log_level":
        level = args.get("level")
        duration = args.get("duration_s")
        if not isinstance(level, str) or level not in LEVELS:
            return 400, {"error": f"level must be one of {', '.join(LEVELS)}"}
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float)
                                     or not 0 < duration <= MAX_LOG_LEVEL_S):
            return 400, {"error": f"duration_s must be a number of seconds in (0, {MAX_LOG_LEVEL_S}]"}
        control.set_log_level(level, duration)
        return 200, {"level": level, "duration_s": duration}
    if name == "list_campaigns":
        return 200, control.campaigns()
    if name == "trigger_campaign":  # a field test of a campaign: an event now, as if its condition fired
        cid = args.get("id")
        if not isinstance(cid, str):
            return 400, {"error": 'give the campaign as {"id": "<campaign id>"}'}
        try:
            return 200, {"id": cid, "event_id": control.trigger_campaign(cid)}
        except KeyError:
            return 404, {"error": f"no campaign {short(cid)}"}
        except ValueError as exc:
            return 409, {"error": str(exc)}
    return 404, {"error": f"unknown method {short(name)}; available: {', '.join(METHODS)}"}
