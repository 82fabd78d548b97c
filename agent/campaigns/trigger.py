"""When a campaign triggers: its condition's truth over time, through mode, hold time and interval.

`TriggerState.update(t, truth)` is called whenever the condition was evaluated (only when one of its
inputs changed); `due(t)` when the engine's time passes the state's `armed` time (a hold time that
elapsed, the next `while` repetition). Both return the trigger times to fire, at the exact time the
hold elapsed, not at the next frame's. The minimum interval is applied by the caller (`fire`).
"""

from __future__ import annotations

INF = float("inf")


class TriggerState:
    """Mode machine of one campaign. `hot`: the state the mode fires in (true, or false after true)."""

    __slots__ = ("mode", "hold", "interval", "truth", "seen_true", "hot_since", "armed")

    def __init__(self, mode: str, hold_s: float, interval_s: float) -> None:
        self.mode, self.hold, self.interval = mode, hold_s, interval_s
        self.truth = False          # a condition never evaluated is false: its first true is a rising edge
        self.seen_true = False      # a falling edge needs a true before it
        self.hot_since: float | None = None
        self.armed = INF            # when `due` has something to fire

    def update(self, t: float, truth: bool) -> list[float]:
        """The condition was evaluated at `t`; trigger times to fire now."""
        if truth:
            self.seen_true = True
        was, self.truth = self.truth, truth
        if self.mode == "falling":  # hot from a true -> false edge on, while it stays false
            hot = not truth and (was or self.hot_since is not None)
        else:
            hot = truth
        if not hot:
            self.hot_since, self.armed = None, INF
            return []
        if self.hot_since is None:  # entering the hot state: an edge
            self.hot_since = t
            self.armed = t + self.hold
            if self.hold == 0:
                return self.due(t)
            return []
        if self.mode == "always" and t >= self.hot_since + self.hold:
            return [t]
        return []

    def due(self, t: float) -> list[float]:
        """Engine time reached `t`: fire what is armed at or before it."""
        if self.armed > t:
            return []
        at = self.armed
        if self.mode == "while":
            nxt = at + self.interval
            if nxt <= t:  # no frames for a while: one trigger now, not one per missed period
                nxt = t + self.interval
            self.armed = nxt
        else:
            self.armed = INF
        return [at]
