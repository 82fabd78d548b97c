"""The campaign model: what the cloud sends in the desired state's `campaigns` list.

Modelled on AWS IoT FleetWise's condition-based campaigns (id, start/expiry, priority, signals to
collect, a condition with a trigger mode and minimum interval, post-trigger duration), plus what it
lacks: a pre-trigger window in seconds, falling edges, `while` and hold times, and hysteresis as
separate set/reset expressions. Expressions are checked here (syntax and whitelist), so a bad one is
refused with the campaign, the field and the position; signal names are resolved against the
databases when the engine is built.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, ValidationError, model_validator

from agent.campaigns.expr import ExpressionError, parse
from agent.model import Priority

MAX_CAMPAIGNS = 256        # FleetWise's limit of conditions
MAX_WINDOW_S = 600.0       # pre_s and post_s: ten minutes each at most


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignSignal(_Model):
    """Signals whose samples an event carries."""

    match: str = Field(min_length=1, max_length=256,
                       description="Signal name, Message.Signal, bus.Message.Signal or a glob (`Wheel*`).")
    min_interval_ms: int = Field(0, ge=0, le=3_600_000,
                                 description="At most one sample of each matched signal per interval in an event.")


TriggerMode = Literal["rising", "falling", "while", "always"]


class Trigger(_Model):
    """When a campaign triggers: a condition (`expr`, or `set`/`reset` with hysteresis) and a mode."""

    expr: str | None = Field(None, max_length=4096, description=(
        "Condition, e.g. `BrakePressure > 80 and VehicleSpeed > 30` (FleetWise syntax accepted too)."))
    set: str | None = Field(None, max_length=4096, description="Hysteresis: the condition turns true when this is true...")
    reset: str | None = Field(None, max_length=4096, description="...and false again only when this is true.")
    mode: TriggerMode = Field("rising", description=(
        "rising: when the condition turns true; falling: when it turns false; while: every min_interval_ms "
        "while true; always: at every evaluation that is true (FleetWise ALWAYS)."))
    hold_ms: int = Field(0, ge=0, le=3_600_000, description=(
        "The condition must hold this long before the trigger (rising/while/always: true; falling: false)."))
    min_interval_ms: int = Field(0, ge=0, le=86_400_000, description=(
        "Least time between two triggers; triggers within it are suppressed (counted). `while`: its period."))

    @model_validator(mode="after")
    def _one_condition(self) -> Trigger:
        if (self.expr is None) == (self.set is None and self.reset is None):
            raise ValueError("give either expr, or set and reset (hysteresis)")
        if (self.set is None) != (self.reset is None):
            raise ValueError("set and reset go together (hysteresis)")
        if self.mode == "while" and self.min_interval_ms <= 0:
            raise ValueError("mode while needs min_interval_ms > 0 (its repeat period)")
        return self

    def expressions(self) -> dict[str, str]:
        """The expressions by field name (`expr`, or `set` and `reset`)."""
        return {k: v for k, v in (("expr", self.expr), ("set", self.set), ("reset", self.reset)) if v is not None}

    @property
    def text(self) -> str:
        """The condition as one line (for event headers)."""
        return self.expr if self.expr is not None else f"set: {self.set}; reset: {self.reset}"


class Campaign(_Model):
    """One condition-triggered (or periodic) capture with pre- and post-trigger windows."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"oneOf": [  # as _check says
        {"required": ["trigger"], "not": {"required": ["period_ms"]}},
        {"required": ["period_ms"], "not": {"required": ["trigger"]}}]})

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
                    description="Campaign id: letters, digits, `_`, `-` (it is a key of the reported properties).")
    start: datetime | None = Field(None, description="Active from (ISO 8601 or epoch seconds; UTC if no zone).")
    expiry: datetime | None = Field(None, description="Expired from (ISO 8601 or epoch seconds).")
    priority: Literal["low", "normal", "high"] = Field("high", description="Upload priority of its event batches.")
    signals: list[CampaignSignal] = Field(default_factory=list, max_length=256, description=(
        "Signals an event carries (the condition's signals are carried too, unless in condition_only)."))
    trigger: Trigger | None = Field(None, description="Condition trigger (or give period_ms).")
    period_ms: int | None = Field(None, ge=100, le=86_400_000,
                                  description="Time-based campaign: trigger every period (instead of a condition).")
    pre_s: float = Field(10.0, ge=0, le=MAX_WINDOW_S, description="Seconds of history before the trigger.")
    post_s: float = Field(5.0, ge=0, le=MAX_WINDOW_S, description="Seconds after the trigger.")
    max_samples: int | None = Field(None, ge=1, le=1_000_000,
                                    description="At most this many samples of one signal in one event (the newest).")
    condition_only: list[str] = Field(default_factory=list, max_length=256, description=(
        "Signals (names or globs) read by the condition but not sent in events (FleetWise conditionOnly)."))

    @model_validator(mode="wrap")
    @classmethod
    def _named(cls, data: Any, handler: ModelWrapValidatorHandler[Campaign]) -> Campaign:
        """Every error of a campaign names it: `campaign 'hard-brake': pre_s: ...`."""
        try:
            return handler(data)
        except ValidationError as exc:
            cid = data.get("id") if isinstance(data, dict) else None
            if not isinstance(cid, str) or not cid:
                raise
            lines = []
            for err in exc.errors():
                msg = err["msg"].removeprefix("Value error, ")
                where = ".".join(str(p) for p in err["loc"])
                lines.append(msg if msg.startswith("campaign ") or not where else f"{where}: {msg}")
            prefix = f"campaign {cid[:64]!r}: "
            raise ValueError("; ".join(line if line.startswith("campaign ") else prefix + line
                                       for line in lines)) from None

    @model_validator(mode="after")
    def _check(self) -> Campaign:
        where = f"campaign {self.id!r}"
        if (self.trigger is None) == (self.period_ms is None):
            raise ValueError(f"{where}: give either trigger or period_ms")
        if self.start is not None and self.expiry is not None and self.expiry_t <= self.start_t:
            raise ValueError(f"{where}: expiry must be after start")
        if self.trigger is not None:
            for name, text in self.trigger.expressions().items():
                try:
                    parse(text)
                except ExpressionError as exc:
                    raise ValueError(f"{where}: trigger.{name}: {exc}") from None
        return self

    @property
    def start_t(self) -> float:
        return _epoch(self.start) if self.start is not None else float("-inf")

    @property
    def expiry_t(self) -> float:
        return _epoch(self.expiry) if self.expiry is not None else float("inf")

    @property
    def priority_level(self) -> Priority:
        return Priority[self.priority]


def _epoch(when: datetime) -> float:
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def check_campaigns(campaigns: list[Campaign]) -> list[Campaign]:
    """Validator of a campaign list: ids unique, at most MAX_CAMPAIGNS."""
    if len(campaigns) > MAX_CAMPAIGNS:
        raise ValueError(f"at most {MAX_CAMPAIGNS} campaigns, got {len(campaigns)}")
    seen: set[str] = set()
    for c in campaigns:
        if c.id in seen:
            raise ValueError(f"campaign {c.id!r}: id used twice")
        seen.add(c.id)
    return campaigns
