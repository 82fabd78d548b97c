"""Databases and logs as agent/decode/ reads them, in-process: every error says which file, which line
and why; a strict-only failure says how to load anyway; a log decodes with every line accounted for.
Fast (the mutation run of agent/decode/ uses them); the CLI's own tests run the same through processes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import cantools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.decode import DatabaseError, FrameDecoder, database_warnings, load_databases
from agent.decode.database import NO_STRICT_HINT, load_database
from agent.decode.logfile import DecodeStats, decode_log

HEAD = 'VERSION ""\nNS_ :\nBS_:\nBU_: ECU\n'
ENGINE = HEAD + '''BO_ 256 Engine: 8 ECU
 SG_ Speed : 0|16@1+ (0.25,0) [0|16383.75] "rpm" ECU
 SG_ Gear : 16|8@1+ (1,0) [0|8] "" ECU
BO_ 512 Mux: 8 ECU
 SG_ Sel M : 0|8@1+ (1,0) [0|0] "" ECU
 SG_ A m1 : 8|8@1+ (1,0) [0|0] "" ECU
VAL_ 256 Gear 0 "N" 1 "First" ;
'''
# Strict cantools refuses signals that overlap; strict=False loads them.
OVERLAPPING = 'BO_ 300 Overlap: 8 ECU\n SG_ A : 0|16@1+ (1,0) [0|0] "" ECU\n SG_ B : 8|8@1+ (1,0) [0|0] "" ECU\n'
OVERLAP = HEAD + 'BO_ 299 Fine: 8 ECU\n SG_ F : 0|8@1+ (1,0) [0|0] "" ECU\n' + OVERLAPPING


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_missing_file_and_a_syntax_error_name_the_file_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dbc"
    with pytest.raises(DatabaseError) as info:
        load_databases([missing])
    assert (info.value.path, info.value.line, info.value.reason) == (missing, 0, "file not found")
    assert str(info.value) == f"{missing}: file not found"
    broken = write(tmp_path, "broken.dbc", ENGINE + "BO_ 300 Broken 8 ECU\n")
    with pytest.raises(DatabaseError) as info:
        load_databases([broken])
    assert info.value.path == broken and info.value.line == 12
    assert str(info.value).startswith(f"{broken}:12: ") and "Invalid syntax" in info.value.reason
    assert NO_STRICT_HINT not in info.value.reason, "broken either way: no hint to load leniently"


def test_a_strict_only_failure_says_how_to_load_anyway_and_lenient_loads_list_the_complaint(tmp_path: Path) -> None:
    path = write(tmp_path, "overlap.dbc", OVERLAP)
    with pytest.raises(DatabaseError) as info:
        load_database(path)
    assert info.value.reason.endswith(f"({NO_STRICT_HINT})") and "overlap" in info.value.reason.lower()
    assert info.value.line == 7, "the line of the message the error names"
    with capture_logs() as logs:
        db = load_databases([path], strict=False)
    assert [m.name for m in db.messages] == ["Fine", "Overlap"]
    (complaint,) = database_warnings(path)
    assert "overlap" in complaint.lower()
    (event,) = [e for e in logs if e["event"] == "database_not_strict"]
    assert event["file"] == str(path) and event["complaint"] == complaint and event["log_level"] == "warning"
    assert database_warnings(tmp_path / "never-loaded.dbc") == []


def test_an_id_defined_in_two_files_names_both_and_the_line(tmp_path: Path) -> None:
    first = write(tmp_path, "a.dbc", ENGINE)
    second = write(tmp_path, "b.dbc", HEAD + "\n\nBO_ 256 Engine2: 8 ECU\n SG_ X : 0|8@1+ (1,0) [0|0] \"\" ECU\n")
    with pytest.raises(DatabaseError) as info:
        load_databases([first, second])
    assert info.value.path == second and info.value.line == 7
    assert info.value.reason == f"frame id 0x100 (Engine2) is already defined in {first}"


def test_the_dbc_repairs_cantools_needs_even_leniently(tmp_path: Path) -> None:
    """A standard id above 11 bits is read as the extended id of that number; a VAL_ of a signal no
    message has is dropped. Strictly, the file is refused with the hint; each repair is listed."""
    path = write(tmp_path, "repairs.dbc", HEAD + '''BO_ 4660 Wide: 8 ECU
 SG_ W : 0|8@1+ (1,0) [0|0] "" ECU
BO_ 2047 Top: 8 ECU
 SG_ T : 0|8@1+ (1,0) [0|0] "" ECU
BO_ 2147483648 ExtendedZero: 8 ECU
 SG_ Z : 0|8@1+ (1,0) [0|0] "" ECU
VAL_ 4660 Ghost 0 "Off" 1 "On" ;
VAL_ 2047 Phantom 0 "Off" ;
''' + OVERLAPPING)
    with pytest.raises(DatabaseError) as info:
        load_database(path)
    assert NO_STRICT_HINT in info.value.reason
    db = load_databases([path], strict=False)
    ids = {m.name: (m.frame_id, m.is_extended_frame) for m in db.messages}
    assert ids == {"Wide": (0x1234, True), "Top": (0x7FF, False), "ExtendedZero": (0, True), "Overlap": (300, False)}
    assert FrameDecoder(db).get(0x1234).decode(bytes([9, 0, 0, 0, 0, 0, 0, 0])) == {"W": 9}
    assert database_warnings(path)[:3] == [  # the VAL_ named by the DBC id of 0x1234 extended (bit 31 set)
        "standard frame id 0x1234 is more than 11 bits: read as extended id 0x1234",
        "VAL_ 2147488308 Ghost: no such signal, entry ignored", "VAL_ 2047 Phantom: no such signal, entry ignored"]
    only_ghosts = write(tmp_path, "ghosts.dbc", ENGINE + 'VAL_ 256 Ghost 0 "Off" ;\n')
    assert [m.name for m in load_databases([only_ghosts], strict=False).messages] == ["Engine", "Mux"]
    assert database_warnings(only_ghosts) == ["VAL_ 256 Ghost: no such signal, entry ignored"]


ATTRIBUTE_TYPES = ["INT 0 65535", "HEX 0 255", "FLOAT 0 1", "STRING", 'ENUM "a","b"']
ATTRIBUTE_VALUES = ["15", "-1.5", "1e3", '"7"', '"abc"', '"NaN"', '"sNaN"', '"Infinity"', '""', '" 3 "', '"1_0"']


@st.composite
def attribute_statements(draw: st.DrawFn) -> list[str]:
    """Definitions and assignments as OEM files hold them, some of attributes nobody defined, some of
    values that are not numbers for numeric attributes."""
    names = ["GenMsgCycleTime", "GenSigStartValue", "Other", "SPN", "DBName", "GenMsgSendType"]
    lines = [f'BA_DEF_ {kind} "{name}" {draw(st.sampled_from(ATTRIBUTE_TYPES))};'
             for name, kind in zip(names, ["BO_", "SG_", "", "SG_", "", "BO_"], strict=True) if draw(st.booleans())]
    for _ in range(draw(st.integers(0, 4))):
        name, value = draw(st.sampled_from([*names, "Undefined"])), draw(st.sampled_from(ATTRIBUTE_VALUES))
        where = draw(st.sampled_from(["BO_ 256 ", "SG_ 256 Speed ", "BU_ ECU ", "", "BO_ 999 "]))
        lines.append(draw(st.sampled_from([f'BA_ "{name}" {where}{value};', f'BA_DEF_DEF_ "{name}" {value};'])))
    return draw(st.permutations(lines))


@settings(max_examples=60, deadline=None)
@given(statements=attribute_statements())
def test_attribute_statements_cantools_cannot_read_are_named_or_ignored(tmp_path_factory: pytest.TempPathFactory,
                                                                       statements: list[str]) -> None:
    """cantools refuses them even with strict=False, as a bare KeyError or decimal.ConversionSyntax
    (the file named, no line, no why); strictly the file is refused at the statement's line with why,
    leniently each such statement is ignored and listed and the rest loads as cantools reads it."""
    text = ENGINE + "".join(line + "\n" for line in statements)
    path = write(tmp_path_factory.mktemp("attrs"), "attrs.dbc", text)
    try:
        cantools.database.load_string(text, "dbc", strict=False)
        refused = False
    except Exception:  # noqa: BLE001 - what cantools does is the reference
        refused = True
    db = load_databases([path], strict=False)
    ignored = [int(c.split(":")[0].removeprefix("line ")) for c in database_warnings(path)]
    assert bool(ignored) == refused
    kept = "".join(line + "\n" for n, line in enumerate(text.split("\n"), 1) if n not in ignored)
    want = cantools.database.load_string(kept, "dbc", strict=False)
    assert [repr(m.cycle_time) for m in db.messages] == [repr(m.cycle_time) for m in want.messages]  # NaN too
    if refused:
        with pytest.raises(DatabaseError) as info:
            load_database(path)
        assert info.value.line in ignored and NO_STRICT_HINT in info.value.reason
        assert info.value.reason.startswith(text.split("\n")[info.value.line - 1].split(" ")[0] + " ")
    else:
        load_database(path)


@pytest.mark.parametrize("statements", [
    ['BA_DEF_ SG_ "GenSigStartValue" STRING;', 'BA_ "GenSigStartValue" SG_ 256 Speed "15";'],
    ['BA_DEF_ SG_ "SPN" FLOAT 0 1;', 'BA_ "SPN" SG_ 256 Speed 0.5;'],
    ['BA_DEF_ BO_ "GenMsgSendType" ENUM "Cyclic","OnChange";', 'BA_ "GenMsgSendType" BO_ 256 7;'],
    ['BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN";', 'BA_ "VFrameFormat" BO_ 256 9;'],
    ['BA_DEF_ BO_ "GenMsgSendType" INT 0 9;', 'BA_DEF_DEF_ "GenMsgSendType" 3;'],
    ['BA_DEF_ "Baudrate" STRING;', 'BA_ "Baudrate" "fast";'],
    ['BA_DEF_ SG_ "GenSigStartValue" STRING;', 'BA_ "GenSigStartValue" SG_ 256 Speed "15";',
     'BA_DEF_ "DBName" INT 0 9;', 'BA_ "DBName" 3;'],
], ids=["string-start-value", "float-spn", "enum-beyond-choices", "frame-format-beyond-choices",
        "int-send-type-default", "baudrate-word", "two-at-once"])
def test_attributes_of_a_type_cantools_cannot_read_are_named_and_ignored(tmp_path: Path, statements: list[str]) -> None:
    """cantools reads GenSigStartValue, SPN, GenMsgSendType, VFrameFormat, DBName and Baudrate into fields
    of one type and refuses the whole file, even with strict=False, when the file's BA_DEF_ gives another
    (a STRING start value, an ENUM index beyond its choices), naming no line. Leniently each statement of
    such an attribute is ignored with its line and the messages decode; strictly the file is refused at
    the first such line, with the hint."""
    path = write(tmp_path, "typed.dbc", ENGINE + "".join(line + "\n" for line in statements))
    first = ENGINE.count("\n") + 1
    db = load_databases([path], strict=False)
    assert FrameDecoder(db).get(256).decode(bytes([40, 0, 0, 0, 0, 0, 0, 0]))["Speed"] is not None
    warned = [int(w.split(":")[0].removeprefix("line ")) for w in database_warnings(path)]
    assert warned == list(range(first, first + len(statements)))
    assert all("cantools cannot read this attribute" in w for w in database_warnings(path))
    with pytest.raises(DatabaseError) as info:
        load_database(path)
    assert info.value.line in warned and NO_STRICT_HINT in info.value.reason


@pytest.mark.parametrize("statements", [
    ['BA_DEF_ BO_ "Big" INT 0 1e99999999;', 'BA_ "Big" BO_ 256 3;'],
    ['BA_DEF_ BO_ "Big" HEX 0 9;', 'BA_ "Big" BO_ 256 9E+0099999999;'],
    ['BA_DEF_ BO_ "Big" ENUM "a","b";', 'BA_DEF_DEF_ "Big" 1.5e123456;'],
], ids=["definition", "value", "default"])
def test_an_attribute_number_of_a_million_digits_is_refused_before_cantools_reads_it(
        tmp_path: Path, statements: list[str]) -> None:
    """cantools builds a Python integer of that many digits for an INT, HEX or ENUM attribute, which
    takes hours: a start that never ends. Leniently the statement is ignored with its line (and any
    statement of an attribute it defined); strictly the file is refused at that line."""
    path = write(tmp_path, "huge.dbc", ENGINE + "".join(line + "\n" for line in statements))
    first = ENGINE.count("\n") + 1
    db = load_databases([path], strict=False)
    assert FrameDecoder(db).get(256).decode(bytes([40, 0, 0, 0, 0, 0, 0, 0]))["Speed"] == 10.0
    warnings = database_warnings(path)
    huge = [w for w in warnings if "1,000 digits or more" in w]
    assert len(huge) == 1 and '"Big"' in huge[0]
    assert int(huge[0].split(":")[0].removeprefix("line ")) in (first, first + 1)
    with pytest.raises(DatabaseError) as info:
        load_database(path)
    assert info.value.line == int(huge[0].split(":")[0].removeprefix("line ")) and NO_STRICT_HINT in info.value.reason
    assert info.value.path == path
    write(tmp_path, "fine.dbc", ENGINE + 'BA_DEF_ BO_ "Big" FLOAT 0 1e300;\nBA_DEF_ BO_ "Near" INT 0 1e999;\n')
    load_database(tmp_path / "fine.dbc")  # a float's exponent, an integer of 1,000 digits: no problem
    write(tmp_path, "edge.dbc", ENGINE + 'BA_DEF_ BO_ "Edge" INT 0 1e1000;\n')
    assert [w.split(": ", 1)[1] for w in (load_databases([tmp_path / "edge.dbc"], strict=False) and
                                          database_warnings(tmp_path / "edge.dbc"))] == [
        'BA_DEF_ "Edge": a number of 1,000 digits or more, beyond any attribute\'s value; statement ignored']


def test_refusals_name_the_file_the_line_and_the_formats_own_words(tmp_path: Path) -> None:
    """What a user reads when a database cannot be used, word for word: the file, the line where one is
    known, and the complaint of the file's own format (cantools tries every format and joins theirs)."""
    cdd = write(tmp_path, "diag.cdd", '<?xml version="1.0"?>\n<CANDELA><ECUDOC><DATATYPES></DATATYPES>'
                                      '<ECU><VAR><DIAGINST></DIAGINST></VAR></ECU></ECUDOC></CANDELA>\n')
    with pytest.raises(DatabaseError) as info:
        load_database(cdd)
    assert (info.value.path, info.value.line) == (cdd, 0)
    assert info.value.reason == ("a diagnostics database (CDD) has no CAN messages to decode; "
                                 "give a DBC, KCD, SYM or ARXML file")
    kcd = write(tmp_path, "neg.kcd", '<NetworkDefinition xmlns="http://kayak.2codeornot2code.org/1.0"><Document/>'
                                     '<Bus name="pt">\n<Message id="-5" format="extended" name="Minus" length="8">'
                                     '<Signal name="S" offset="0" length="8"/></Message></Bus></NetworkDefinition>')
    with pytest.raises(DatabaseError) as info:
        load_databases([kcd], strict=False)
    assert (info.value.path, info.value.line) == (kcd, 0)  # a line is found in DBC files only
    assert info.value.reason == "frame id -5 of message Minus is not a CAN id"
    for name, text in [("bad.kcd", "<NetworkDefinition><Bus"), ("bad.sym", "FormatVersion=6.0\n{SEND}\n[X\n")]:
        broken = write(tmp_path, name, text)
        try:
            cantools.database.load_file(str(broken), strict=True)
        except cantools.database.UnsupportedDatabaseFormatError as exc:
            own = str(getattr(exc, "e_" + name.split(".")[1])).strip('"')
        with pytest.raises(DatabaseError) as info:
            load_database(broken)
        assert info.value.path == broken and info.value.reason == own
    overlap = write(tmp_path, "overlap.dbc", ENGINE.replace(' SG_ Speed : 0|16@1+', ' SG_ Speed : 4|16@1+'))
    try:
        cantools.database.load_file(str(overlap), strict=True)
    except cantools.database.UnsupportedDatabaseFormatError as exc:  # cantools' own words are the reference
        said = str(exc.e_dbc).strip('"')
    with pytest.raises(DatabaseError) as info:
        load_database(overlap)
    assert info.value.path == overlap and info.value.reason == f"{said} ({NO_STRICT_HINT})"
    assert info.value.line == ENGINE.split("\n").index("BO_ 256 Engine: 8 ECU") + 1


def test_parsed_databases_are_reused_until_a_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "engine.dbc", ENGINE)
    first = load_databases([path])
    assert load_databases([str(path)]) is first, "an unchanged file is not parsed again"
    assert load_databases([path], strict=False) is not first, "strictness is part of the key"
    path.write_text(ENGINE.replace("Engine", "Motor"))
    assert [m.name for m in load_databases([path]).messages] == ["Motor", "Mux"]


def test_labels_are_the_choice_names_and_numbers_without_one() -> None:
    import cantools

    dec = FrameDecoder(cantools.database.load_string(ENGINE, "dbc")).get(256)
    assert [dec.label("Gear", v) for v in (0, 1, 1.0, 7)] == ["N", "First", "First", 7]
    assert dec.label("Speed", 3.5) == 3.5 and math.isnan(dec.label("Gear", math.nan))
    assert dec.label("Gear", math.inf) == math.inf


def test_a_log_decodes_with_every_line_accounted_for(tmp_path: Path) -> None:
    import cantools

    decoder = FrameDecoder(cantools.database.load_string(ENGINE, "dbc"))
    log_text = "\n".join([
        "(1700000000.100000) can0 100#A00F010000000000",  # Engine: 1000 rpm, gear 1
        "(1700000000.200000) can0 7FF#00",                # unknown id
        "(1700000000.250000) can0 7FF#00",
        "(1700000000.260000) can0 123#00",
        "(1700000000.300000) can0 100#A00F",              # short
        "(1700000000.400000) can0 200#0500000000000000",  # no page for selector 5
        "this is not a frame",
        "(1700000000.410000) can0 20000100#0000000000000000",  # an error frame (ERR flag) and a remote
        "(1700000000.420000) can0 100#R",                      # request of Engine's id: neither decoded
        "(1700000000.430000) can0 100#00",                     # short again
        "(1700000000.440000) can0 200#0600000000000000",       # undecodable again
        *(f"(1700000000.45{i}000) can0 {0x300 + i:X}#00" for i in range(11)),  # 11 more unknown ids
        "(1700000000.500000) can1 200#0107000000000000",
    ]) + "\n"
    stats = DecodeStats()
    with capture_logs() as logs:
        records = list(decode_log(decoder, io.StringIO(log_text), stats, labels=True))
    assert records == [
        {"t": 1700000000.1, "bus": "can0", "id": 256, "message": "Engine", "signals": {"Speed": 1000.0, "Gear": "First"}},
        {"t": 1700000000.5, "bus": "can1", "id": 512, "message": "Mux", "signals": {"Sel": 1, "A": 7}}]
    assert stats.as_log() == {"decoded": 2, "unknown_frames": 14, "unknown_ids": 13, "short_frames": 2, "bad_lines": 3,
                              "unknown_id_list": ["0x7FF", "0x123", *(f"0x{0x300 + i:X}" for i in range(8))]}
    events: dict[str, dict] = {}
    for e in logs:
        events.setdefault(e["event"], e)  # the first of each
    assert events["short_frame"] == {"event": "short_frame", "log_level": "warning", "file": "<stdin>", "line": 5, "id": "0x100",
                                     "reason": "Engine needs 8 bytes, frame has 2"}
    assert events["undecodable_frame"]["line"] == 6 and events["undecodable_frame"]["id"] == "0x200"
    assert events["undecodable_frame"]["reason"] == "expected multiplexer id 1, but got 5"
    assert events["bad_line"] == {"event": "bad_line", "log_level": "warning", "file": "<stdin>", "line": 7,
                                  "text": "this is not a frame",
                                  "reason": "not a candump -L line: expected '(time) channel id#data'"}
    numbers = list(decode_log(decoder, io.StringIO(log_text), DecodeStats()))
    assert numbers[0]["signals"] == {"Speed": 1000.0, "Gear": 1}, "numbers unless labels are asked for"


def test_which_scalings_let_raws_compare_like_values() -> None:
    """one_to_one: raws stand in for values in on-change comparisons only where distinct raws give distinct
    values: never for IEEE floats (NaN), always for integer arithmetic, for a float factor up to 48 bits of
    range and an offset of at most 2**48 factors."""
    import cantools

    from agent.decode.fast import one_to_one

    db = cantools.database.load_string(HEAD + '''BO_ 1 M: 8 ECU
 SG_ Raw : 0|8@1+ (1,0) [0|0] "" ECU
 SG_ Ints : 0|8@1+ (3,-7) [0|0] "" ECU
 SG_ Zero : 0|8@1+ (0,5) [0|0] "" ECU
 SG_ F48 : 0|48@1+ (0.5,0) [0|0] "" ECU
 SG_ F49 : 0|49@1+ (0.5,0) [0|0] "" ECU
 SG_ EdgeOffset : 0|8@1+ (0.5,140737488355328) [0|0] "" ECU
 SG_ FarOffset : 0|8@1+ (0.5,140737488355329) [0|0] "" ECU
 SG_ Huge : 0|8@1+ (1e308,0.5) [0|0] "" ECU
BO_ 2 F: 8 ECU
 SG_ Ieee : 0|32@1- (1,0) [0|0] "" ECU
SIG_VALTYPE_ 2 Ieee : 1;
''', "dbc", strict=False)
    sig = {s.name: s for m in db.messages for s in m.signals}
    assert {name: one_to_one(s) for name, s in sig.items()} == {
        "Raw": True, "Ints": True, "Zero": False, "F48": True, "F49": False, "EdgeOffset": True, "FarOffset": False,
        "Huge": False, "Ieee": False}


def test_the_fast_decoder_pages_padding_and_undefined_multiplexer_values() -> None:
    import cantools

    from agent.decode.fast import FastDecoder, UnknownPageError

    db = cantools.database.load_string(ENGINE, "dbc")
    mux = FastDecoder(db.get_message_by_name("Mux"), ["Sel", "A"])
    assert mux.decode(bytes([1, 7, 0, 0, 0, 0, 0, 0])) == (1, (1, 7))
    assert mux.decode(bytes([1, 9, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])) == (1, (1, 9)), "padding ignored"
    with pytest.raises(UnknownPageError, match="^Mux: multiplexer value 5 is not defined$"):
        mux.decode(bytes([5, 0, 0, 0, 0, 0, 0, 0]))
    engine = FastDecoder(db.get_message_by_name("Engine"), ["Speed"])
    assert engine.decode(bytes([0xA0, 0x0F, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])) == (None, (1000.0,))
    assert FastDecoder(db.get_message_by_name("Engine"), []).decode(bytes(8)) is None, "no wanted signal"
