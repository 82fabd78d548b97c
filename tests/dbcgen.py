"""DBC text for tests: random layouts (the property tests) and a large, sloppy OEM-like database.

Real OEM databases load only with cantools' strict=False: signals overlap (a multiplexed page over
a plain signal, a status bit inside a counter), signals do not fit their message, 64-bit
diagnostic fields, multiplexers whose value table names values no page uses, CAN FD lengths.
`oem_database` writes such a file (`python -m tests.dbcgen` regenerates tests/data/oem_sloppy.dbc;
`python -m tests.dbcgen production` the clean production-size tests/data/production/*.dbc);
`MessageSpec` / `dbc_text` are what the hypothesis tests draw.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

FD_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


@dataclass
class SignalSpec:
    name: str
    start: int            # DBC start bit (LSB for little endian, MSB sawtooth for big endian)
    length: int
    little: bool = True
    signed: bool = False
    kind: str = "int"     # int, f32, f64
    scale: float = 1
    offset: float = 0
    page: int | None = None  # multiplexed: the multiplexer value that selects it
    choices: dict[int, str] = field(default_factory=dict)
    unit: str = ""
    minimum: float = 0    # DBC [min|max]; [0|0] means "the raw range" to cantools and the simulator
    maximum: float = 0
    comment: str = ""


@dataclass
class MessageSpec:
    name: str
    frame_id: int
    length: int
    signals: list[SignalSpec]
    mux: SignalSpec | None = None       # the multiplexer signal, if any
    extended: bool = False
    cycle_ms: int = 100
    comment: str = ""
    sender: str = "ECU"
    fd: bool = False      # CAN FD (VFrameFormat 14/15)


def _number(x: float) -> str:
    return repr(x) if not isinstance(x, float) or x == x else "0"


def dbc_text(messages: list[MessageSpec], extra: str = "") -> str:
    """A DBC file of these messages (float signals via SIG_VALTYPE_, value tables via VAL_; comments,
    units, ranges and CAN FD frame formats where the specs have them)."""
    nodes = ["ECU", "GW", "DIAG"] + sorted({m.sender for m in messages} - {"ECU", "GW", "DIAG"})
    lines = ['VERSION "vehicle-agent tests"', "", "NS_ :", "", "BS_:", "", f"BU_: {' '.join(nodes)}", ""]
    tail: list[str] = []
    for m in messages:
        fid = m.frame_id | (0x80000000 if m.extended else 0)
        lines.append(f"BO_ {fid} {m.name}: {m.length} {m.sender}")
        for s in ([m.mux] if m.mux else []) + m.signals:
            marker = " M" if s is m.mux else (f" m{s.page}" if s.page is not None else "")
            lines.append(f" SG_ {s.name}{marker} : {s.start}|{s.length}@{1 if s.little else 0}{'-' if s.signed else '+'}"
                         f" ({_number(s.scale)},{_number(s.offset)}) [{_number(s.minimum)}|{_number(s.maximum)}]"
                         f" \"{s.unit}\" GW")
            if s.kind != "int":
                tail.append(f"SIG_VALTYPE_ {fid} {s.name} : {1 if s.kind == 'f32' else 2};")
            if s.choices:
                tail.append(f"VAL_ {fid} {s.name} " + " ".join(f'{k} "{v}"' for k, v in s.choices.items()) + " ;")
            if s.comment:
                tail.append(f'CM_ SG_ {fid} {s.name} "{s.comment}";')
        lines.append("")
        if m.comment:
            tail.append(f'CM_ BO_ {fid} "{m.comment}";')
        tail.append(f'BA_ "GenMsgCycleTime" BO_ {fid} {m.cycle_ms};')
        if m.fd:
            tail.append(f'BA_ "VFrameFormat" BO_ {fid} {15 if m.extended else 14};')
    head = ['BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;', 'BA_DEF_DEF_ "GenMsgCycleTime" 0;']
    if any(m.fd for m in messages):
        head += ['BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN",' + '"reserved",' * 12
                 + '"StandardCAN_FD","ExtendedCAN_FD";', 'BA_DEF_DEF_ "VFrameFormat" "StandardCAN";']
    return "\n".join(lines + head + tail) + "\n" + extra


# ---------------------------------------------------------------------------- the large database
_UNITS = ["Speed", "Temp", "Pressure", "Current", "Voltage", "Torque", "Angle", "Rate", "Level", "Counter", "Status",
          "Mode", "Request", "Position", "Flow", "Load"]
_PARTS = ["Eng", "Trans", "Brk", "Steer", "Bat", "Inv", "Mot", "Clim", "Door", "Seat", "Light", "Wiper", "Adas",
          "Radar", "Cam", "Park", "Tpms", "Hvac", "Obc", "Dcdc", "Bms", "Vcu", "Esp", "Eps", "Acc", "Lka"]
_SCALES = [(1, 0), (1, 0), (0.1, 0), (0.01, 0), (0.5, -40), (0.25, 0), (0.001, 0), (2, 0), (0.0625, -273),
           (0.05, -1600), (1, -40), (10, 0), (0.1, -3276.8), (1e-3, -2e3)]


def _packed(rng: random.Random, prefix: str, length: int, count: int, big: bool) -> list[SignalSpec]:
    """Signals laid side by side without overlap, in one byte order, as a careful OEM file has them."""
    out, bit, total = [], 0, 8 * length
    for k in range(count):
        width = min(rng.choice([1, 1, 2, 4, 8, 8, 12, 16, 16, 16, 32]), total - bit)
        if width <= 0:
            break
        scale, offset = rng.choice(_SCALES)
        if big:  # MSB of the field, sawtooth numbering; fields packed in network order
            msb_net = bit
            start = 8 * (msb_net // 8) + 7 - msb_net % 8
        else:
            start = bit
        out.append(SignalSpec(f"{prefix}{rng.choice(_UNITS)}{k}", start, width, not big, rng.random() < 0.3,
                              "int", scale, offset))
        bit += width
    return out


def oem_database(seed: int = 12, messages: int = 700) -> list[MessageSpec]:
    """A large OEM-like database: 700 messages, ~3,400 signals, mostly clean, with the sloppiness of
    real files (see the module docstring); every one of them loads with cantools' strict=False."""
    rng = random.Random(seed)
    out: list[MessageSpec] = []
    used: set[int] = set()
    for n in range(messages):
        part = rng.choice(_PARTS)
        extended = rng.random() < 0.25
        while True:
            fid = rng.randrange(0x18000000, 0x1FFFFFFF) if extended else rng.randrange(0x80, 0x7FF)
            if fid not in used:
                used.add(fid)
                break
        kind = rng.random()
        length = rng.choice([8, 8, 8, 8, 6, 4, 2]) if kind < 0.85 else rng.choice([12, 16, 24, 32, 48, 64])
        name = f"{part}_{'Status' if n % 3 else 'Info'}_{n:03d}"
        big = rng.random() < 0.35
        signals = _packed(rng, part, length, rng.randrange(4, 16), big)
        m = MessageSpec(name, fid, length, signals, extended=extended, cycle_ms=rng.choice([10, 20, 50, 100, 1000]))
        sloppiness = rng.random()
        if sloppiness < 0.06 and signals:  # a status bit inside a wider field (overlap)
            host = rng.choice(signals)
            signals.append(SignalSpec(f"{part}Flag{n}", host.start, 1, host.little))
        elif sloppiness < 0.10:  # a signal that runs past the message's end
            signals.append(SignalSpec(f"{part}Tail{n}", 8 * length - 4, 16, True))
        elif sloppiness < 0.18 and length >= 8:  # a 64-bit diagnostic field on its own (UDS data)
            m.signals = [SignalSpec(f"Diag{n}_Data", 7 if big else 0, 64, not big, rng.random() < 0.3, "int",
                                    rng.choice([1, 1, 10, 0.5]), rng.choice([0, 0, 5]))]
        elif sloppiness < 0.24 and length >= 8:  # IEEE float and double signals
            m.signals = [SignalSpec(f"{part}Float{n}", 0, 32, True, True, "f32", rng.choice([1, 0.1]), 0),
                         SignalSpec(f"{part}Real{n}", 32, 32, True, True, "f32")] if rng.random() < 0.5 else \
                        [SignalSpec(f"{part}Double{n}", 0, 64, True, True, "f64")]
        elif sloppiness < 0.36 and length >= 4:  # multiplexed, with selector values that have no page
            m.mux = SignalSpec(f"{part}Page{n}", 0, 8, True, choices={0: "A", 1: "B", 2: "C", 7: "Reserved"})
            pages = []
            for page in range(rng.randrange(1, 4)):
                for s in _packed(rng, f"{part}P{page}", length - 1, rng.randrange(1, 5), False):
                    s.start += 8
                    s.page = page
                    pages.append(s)
            plain = [SignalSpec(f"{part}Alive{n}", 8 * length - 4, 4, True)]
            if rng.random() < 0.3:  # a page signal over a plain one: loads only with strict=False
                plain.append(SignalSpec(f"{part}Shadow{n}", 8, 8, True))
            m.signals = plain + pages
        if rng.random() < 0.15 and m.signals:
            s = rng.choice(m.signals)
            if s.kind == "int" and s.length <= 8:
                s.choices = {0: "Off", 1: "On", 2: "Error", 3: "NotAvailable"}
        out.append(m)
    return out


# ------------------------------------------------------------------- production-size databases
# tests/data/production/<bus>.dbc: the bundled car's buses grown to the size of an OEM file (issue 19):
# the bundled messages (whose signals the simulator's drive model moves and the default config's
# policies and campaign name) plus generated ones, clean (strict loads), with what real files carry:
# comments on most signals, units and ranges, value tables, alive counters and CRCs, mixed byte
# orders, multiplexed pages, 64-bit and IEEE float fields, 29-bit ids, CAN FD frames on chassis.
PRODUCTION_BUSES = {"powertrain": (21, 340, False), "chassis": (22, 330, True), "body": (23, 330, False)}
_ECUS = {"Eng": "EMS", "Trans": "TCU", "Brk": "ESP", "Steer": "EPS", "Bat": "BMS", "Inv": "INV", "Mot": "MCU",
         "Clim": "HVAC", "Door": "BCM", "Seat": "BCM", "Light": "BCM", "Wiper": "BCM", "Adas": "ADAS",
         "Radar": "RADAR", "Cam": "CAM", "Park": "PAC", "Tpms": "TPMS", "Hvac": "HVAC", "Obc": "OBC",
         "Dcdc": "DCDC", "Bms": "BMS", "Vcu": "VCU", "Esp": "ESP", "Eps": "EPS", "Acc": "ADAS", "Lka": "CAM"}
_PARTS_OF = {"powertrain": ["Eng", "Trans", "Inv", "Mot", "Bat", "Bms", "Vcu", "Obc", "Dcdc"],
             "chassis": ["Brk", "Steer", "Esp", "Eps", "Adas", "Radar", "Cam", "Acc", "Lka", "Tpms", "Park"],
             "body": ["Door", "Seat", "Light", "Wiper", "Clim", "Hvac", "Park", "Tpms"]}
# (name suffix, bits, scale, offset, unit, lo, hi): analog quantities as OEM files scale them
_ANALOG = [("Speed", 16, 0.01, 0, "km/h", 0, 300), ("Current", 16, 0.05, -1600, "A", -1600, 1600),
           ("Voltage", 16, 0.01, 0, "V", 0, 600), ("Torque", 16, 0.5, -16000, "Nm", -4000, 4000),
           ("Angle", 16, 0.1, -3276.8, "deg", -780, 780), ("Rate", 12, 0.25, -512, "1/s", -512, 511),
           ("Pressure", 12, 0.1, 0, "bar", 0, 400), ("Position", 10, 0.1, 0, "%", 0, 100),
           ("Level", 8, 0.4, 0, "%", 0, 100), ("Flow", 16, 0.01, 0, "l/h", 0, 600), ("Load", 8, 0.5, 0, "%", 0, 127.5),
           ("Temp", 8, 1, -40, "degC", -40, 215), ("CoolantTemp", 8, 1, -40, "degC", -40, 215),
           ("Power", 16, 0.1, -3276.8, "kW", -400, 400), ("Energy", 32, 0.001, 0, "kWh", 0, 4e6),
           ("Distance", 16, 0.01, 0, "m", 0, 655.35), ("Accel", 16, 0.001, -32.768, "m/s^2", -32.768, 32.767)]
_ENUMS = [("State", {0: "Off", 1: "Init", 2: "Active", 3: "Degraded", 4: "Fault", 7: "NotAvailable"}),
          ("Mode", {0: "Normal", 1: "Eco", 2: "Sport", 3: "Comfort", 4: "Service"}),
          ("Request", {0: "NoRequest", 1: "Request", 2: "Reserved", 3: "Invalid"}),
          ("Status", {0: "Inactive", 1: "Active", 2: "Error", 3: "NotAvailable"})]
_FLAGS = ["Warning", "Fault", "Active", "Request", "Valid", "Open", "Lamp", "Error"]


def _dbc_start(bit: int, width: int, big: bool) -> int:
    """DBC start bit of a field occupying `width` bits from `bit` on (LSB-first numbering for little
    endian; network order, MSB first, for big endian)."""
    return 8 * (bit // 8) + 7 - bit % 8 if big else bit


def _production_signal(rng: random.Random, prefix: str, room: int, k: int, sender: str, cycle: int) -> SignalSpec | None:
    """One signal of a generated message, at most `room` bits wide (its position set by the caller)."""
    kind = rng.random()
    if kind < 0.45:
        name, bits, scale, offset, unit, lo, hi = rng.choice(_ANALOG)
        if bits > room:
            return None
        signed = offset == 0 and lo < 0
        spec = SignalSpec(f"{prefix}{name}{k}", 0, bits, True, signed, "int", scale, offset, unit=unit,
                          minimum=lo, maximum=min(hi, round(offset + scale * ((1 << bits) - 1), 6)))
        what = f"{name.lower()} in {unit}"
    elif kind < 0.70:
        word, table = rng.choice(_ENUMS)
        bits = 3 if max(table) > 3 else 2
        if bits > room:
            return None
        spec = SignalSpec(f"{prefix}{word}{k}", 0, bits, True, choices=dict(table), maximum=(1 << bits) - 1)
        what = f"{word.lower()} of the {prefix} function"
    else:
        word = rng.choice(_FLAGS)
        spec = SignalSpec(f"{prefix}{word}{k}", 0, 1, True, choices={0: "False", 1: "True"} if rng.random() < 0.3 else {},
                          maximum=1)
        what = f"{word.lower()} flag"
    if rng.random() < 0.65:
        spec.comment = (f"{prefix} {what}, sent by {sender} every {cycle} ms; receivers must treat a missing "
                        f"frame for 3 cycles as a timeout (substitute value, DTC)")
    return spec


def _lay_out(rng: random.Random, prefix: str, first: int, end: int, big: bool, k0: int, sender: str,
             cycle: int, most: int) -> list[SignalSpec]:
    """Up to `most` signals side by side in bits [first, end) of one byte order, gaps left as OEM
    files leave them (and the rest of the payload unused, as it often is)."""
    out, bit, k = [], first, k0
    while bit < end and len(out) < most:
        spec = _production_signal(rng, prefix, end - bit, k, sender, cycle)
        if spec is None:
            if end - bit < 8:
                break
            continue
        spec.little = not big
        spec.start = _dbc_start(bit, spec.length, big)
        out.append(spec)
        bit += spec.length + (rng.choice([0, 0, 0, 1, 2]) if spec.length < 8 else 0)
        k += 1
    return out


def _from_cantools(msg) -> MessageSpec:  # noqa: ANN001 - a cantools Message (imported lazily)
    """A bundled message as a spec, so the production file carries it unchanged."""
    def spec(s) -> SignalSpec:  # noqa: ANN001
        kind = ("f32" if s.length == 32 else "f64") if s.is_float else "int"
        return SignalSpec(s.name, s.start, s.length, s.byte_order == "little_endian", s.is_signed, kind, s.scale,
                          s.offset, None if not s.multiplexer_ids else s.multiplexer_ids[0],
                          {int(k): str(v) for k, v in (s.choices or {}).items()}, s.unit or "",
                          s.minimum if s.minimum is not None else 0, s.maximum if s.maximum is not None else 0,
                          s.comment or "")
    mux = next((spec(s) for s in msg.signals if s.is_multiplexer), None)
    return MessageSpec(msg.name, msg.frame_id, msg.length, [spec(s) for s in msg.signals if not s.is_multiplexer],
                       mux, msg.is_extended_frame, msg.cycle_time or 100, msg.comment or "",
                       (msg.senders or ["ECU"])[0], msg.is_fd)


def production_database(bus: str) -> list[MessageSpec]:
    """The bundled `bus` database plus generated messages up to its production size (PRODUCTION_BUSES)."""
    import cantools  # only the generator needs it

    seed, count, fd_bus = PRODUCTION_BUSES[bus]
    rng = random.Random(seed)
    bundled = Path(__file__).resolve().parent.parent / "config" / "dbc" / f"{bus}.dbc"
    out = [_from_cantools(m) for m in cantools.database.load_file(str(bundled)).messages]
    used = {m.frame_id for m in out}
    parts = _PARTS_OF[bus]
    for n in range(count - len(out)):
        part = rng.choice(parts)
        sender = _ECUS[part]
        extended = rng.random() < 0.2
        while True:
            fid = rng.randrange(0x18000000, 0x1FFFFFFF) if extended else rng.randrange(0x100, 0x7FF)
            if fid not in used:
                used.add(fid)
                break
        fd = fd_bus and rng.random() < 0.25
        length = rng.choice([12, 16, 20, 24, 32, 48, 64]) if fd else rng.choice([8, 8, 8, 8, 8, 8, 6, 4])
        cycle = rng.choice([20, 50, 100, 100, 100, 200, 200, 500, 500, 1000, 1000, 1000])
        name = f"{part}_{rng.choice(['Status', 'Info', 'Data', 'Cmd', 'Diag'])}_{n:03d}"
        prefix = f"{part}{n}"
        e2e = length >= 4 and rng.random() < 0.5  # alive counter + CRC in the last two bytes (AUTOSAR E2E)
        end = 8 * length - (16 if e2e else 0)
        layout = rng.random()
        most = rng.randrange(2, 9) if length <= 8 else rng.randrange(6, 17)
        mux = None
        if layout < 0.08 and length >= 4:  # multiplexed: pages selected by the first byte
            mux = SignalSpec(f"{prefix}PageIndex", 0, 8, True, maximum=255, comment=f"page of {name}")
            signals = []
            for page in range(rng.randrange(2, 7)):
                for s in _lay_out(rng, f"{prefix}P{page}", 8, end, rng.random() < 0.3, 0, sender, cycle, 3):
                    s.page = page
                    signals.append(s)
        elif layout < 0.12 and length == 8 and not e2e:  # one 64-bit field: odometer in mm, UDS data, a timestamp
            big = rng.random() < 0.5
            word, scale, unit = rng.choice([("OdometerMm", 0.001, "m"), ("DiagData", 1, ""), ("TimestampUs", 1e-6, "s")])
            signals = [SignalSpec(f"{prefix}{word}", _dbc_start(0, 64, big), 64, not big, False, "int", scale, 0,
                                  unit=unit, comment=f"{word} of {sender}, 64 bits")]
        elif layout < 0.16 and length == 8 and not e2e:  # IEEE floats
            signals = [SignalSpec(f"{prefix}Real{k}", 32 * k, 32, True, True, "f32", unit="") for k in range(2)] \
                if rng.random() < 0.5 else [SignalSpec(f"{prefix}Double", 0, 64, True, True, "f64")]
        elif layout < 0.40 and length >= 4:  # mixed byte orders: Intel fields, then Motorola ones
            half = 8 * (length // 2)
            signals = _lay_out(rng, prefix, 0, half, False, 0, sender, cycle, most // 2)
            signals += _lay_out(rng, prefix, half, end, True, len(signals), sender, cycle, most - len(signals))
        else:
            signals = _lay_out(rng, prefix, 0, end, rng.random() < 0.35, 0, sender, cycle, most)
        if e2e:
            signals.append(SignalSpec(f"{prefix}AliveCounter", 8 * length - 16, 4, True, maximum=15))
            signals.append(SignalSpec(f"{prefix}Crc", 8 * length - 8, 8, True, maximum=255,
                                      comment="CRC8 SAE J1850 over the payload and the data id"))
        out.append(MessageSpec(name, fid, length, signals, mux, extended, cycle,
                               f"{name}: {part} data from {sender}", sender, fd))
    return out


def write_production_databases(folder: Path) -> list[Path]:
    """tests/data/production/<bus>.dbc for every bus of PRODUCTION_BUSES (deterministic)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for bus in PRODUCTION_BUSES:
        path = folder / f"{bus}.dbc"
        path.write_text(dbc_text(production_database(bus)))
        written.append(path)
    return written


if __name__ == "__main__":
    data = Path(__file__).resolve().parent / "data"
    if sys.argv[1:] == ["production"]:
        for path in write_production_databases(data / "production"):
            sys.stdout.write(f"{path}\n")
    else:
        target = data / "oem_sloppy.dbc"
        target.write_text(dbc_text(oem_database()))
        sys.stdout.write(f"{target}: {sum(len(m.signals) + (m.mux is not None) for m in oem_database())} signals\n")
