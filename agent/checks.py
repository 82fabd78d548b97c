"""Checks of a config against its databases, beyond what validation sees: `vehicle-agent check-config`.

Validation proves a config well-formed; only the databases tell whether it does what was meant. A
collection rule that matches no signal is almost always a typo (`Wheel*` for `WheelSpeed*` is fine,
`VehicleSpd` is not), and it fails silently: the signal is collected by the default rule instead.
"""

from __future__ import annotations

from agent.campaigns.engine import campaign_errors
from agent.collect.policy import policy_resolver
from agent.config import AgentConfig, CollectionConfig, ConfigError
from agent.decode import DatabaseError, database_warnings, load_databases


def check_databases(cfg: AgentConfig, source: str = "config") -> list[str]:
    """Load every bus's databases; the first one that fails is a ConfigError naming bus and position.
    Then the campaigns' signals against them (every problem, naming campaign, field and position).
    Returns what cantools' strict checks say about the files of buses with `strict: false`."""
    lenient = []
    for i, bus in enumerate(cfg.buses):
        for j, db in enumerate(bus.databases):
            try:
                load_databases([cfg.resolve(db)], strict=bus.strict)
            except DatabaseError as exc:
                raise ConfigError([f"buses[{i}].databases[{j}]: {exc}"], source) from None
            if not bus.strict:
                lenient += [f"buses[{i}].databases[{j}]: {cfg.resolve(db)}: not strict: {complaint}"
                            for complaint in database_warnings(cfg.resolve(db))]
    errors = campaign_errors(cfg)  # campaigns name signals of these databases
    if errors:
        raise ConfigError([f"campaigns: {e}" for e in errors], source)
    return lenient


CANFD_MAX_BYTES = 64


def undecodable_messages(cfg: AgentConfig) -> list[str]:
    """A warning per message none of whose frames can decode, each frame a decode error at run time: one
    longer than a CAN FD frame, or a plain message whose layout cantools cannot unpack (an IEEE float
    of 8 bits, a signal beyond the message under `strict: false`). Its other signals are lost with it."""
    warnings = []
    for i, bus in enumerate(cfg.buses):
        for msg in load_databases([cfg.resolve(p) for p in bus.databases], strict=bus.strict).messages:
            why = f"{msg.length} bytes, more than a CAN FD frame carries" if msg.length > CANFD_MAX_BYTES else None
            if why is None and not msg.is_multiplexed():  # a page's layout depends on the payload
                try:
                    msg.decode(bytes(msg.length), decode_choices=False, scaling=False)
                except Exception as exc:  # noqa: BLE001 - cantools' own refusal, whatever its kind
                    why = f"cantools cannot unpack its layout ({exc})"
            if why:
                warnings.append(f"buses[{i}] ({bus.name}): message {msg.name} (0x{msg.frame_id:X}): {why}: "
                                "every frame of it is a decode error")
    return warnings


def signal_names(cfg: AgentConfig) -> set[tuple[str, str]]:
    """(message, signal) of every signal of every bus's databases."""
    names: set[tuple[str, str]] = set()
    for bus in cfg.buses:
        db = load_databases([cfg.resolve(p) for p in bus.databases], strict=bus.strict)
        names.update((m.name, s.name) for m in db.messages for s in m.signals)
    return names


def unmatched_rules(cfg: AgentConfig) -> list[str]:
    """A warning per collection rule that matches no signal, or whose every signal an earlier rule takes."""
    names = signal_names(cfg)
    resolve = policy_resolver(cfg.collection)
    taken = {id(resolve(m, s)) for m, s in names}
    warnings = []
    for i, rule in enumerate(cfg.collection.signals):
        alone = policy_resolver(CollectionConfig(signals=[rule]))  # the same matching as the collector's
        where = f"collection.signals[{i}] (match {rule.match!r})"
        if not any(alone(m, s) is rule for m, s in names):
            warnings.append(f"{where} matches no signal of the buses' databases")
        elif id(rule) not in taken:
            warnings.append(f"{where} never applies: earlier rules take every signal it matches")
    return warnings
