"""The campaign condition language: what it accepts, what it computes, and what it refuses (with the
position in the text as written), Python and FleetWise syntax alike; hypothesis-generated hostile
and random expressions too."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.campaigns.expr import MATH, WINDOW_FUNCTIONS, ExpressionError, compile_condition, parse
from agent.campaigns.model import Campaign, check_campaigns

pytestmark = pytest.mark.campaigns

VALUES = {"A": 3.0, "B": -2.5, "Msg.C": 10.0, "bus.Msg.D": 0.0}


def evaluate(text: str, values: dict[str, float] = VALUES, prevs: dict[str, float] | None = None):
    parsed = parse(text)
    names = list(values)
    fn = compile_condition(parsed, names.index, lambda s, label: {"On": 1.0}[label], lambda f, s, ms: 0)
    prev = [(prevs or {}).get(n) for n in names]
    return fn([values[n] for n in names], prev, [])


@pytest.mark.parametrize(("text", "want"), [
    ("A > 2 and B < 0", True),
    ("A > 2 && B < 0", True),
    ("!(A > 2) || Msg.C == 10", True),
    ("not A > 2 or Msg.C != 10", False),
    ("$variable.`A` * 2 + $variable.`Msg.C` == 16", True),
    ("abs(B) == 2.5 and max(A, B, 7) == 7 and min(A, B) == -2.5", True),
    ("pow(A, 2) == 9 and floor(B) == -3 and ceil(B) == -2 and log(100, 10) == 2", True),
    ("A % 2 == 1 && A // 2 == 1 && -A == -3 && +A == 3 && A ** 2 == 9", True),
    ("1 < A <= 3 < Msg.C", True),
    ("bus.Msg.D == false || true", True),
    ("isNull(A)", False),
    ("delta(A) == 1 && prev(A) == 2 && changed(A)", True),
    ("  A > 2\n", True),
])
def test_expressions_compute_what_they_say(text: str, want: bool) -> None:
    assert evaluate(text, prevs={"A": 2.0}) == want


def test_missing_inputs_and_arithmetic_errors_raise_for_the_engine_to_count() -> None:
    with pytest.raises(TypeError):
        evaluate("A > 1", {"A": None})  # type: ignore[dict-item]
    assert evaluate("isNull(A) || A > 1", {"A": None}) is True  # type: ignore[dict-item]
    with pytest.raises(ZeroDivisionError):
        evaluate("A / 0 > 1")
    with pytest.raises(OverflowError):  # numbers are floats: this overflows instead of computing a huge int
        evaluate("10 ** 10 ** 10 > 1")


HOSTILE = [  # (fragment, offset of the error in it, what the message says)
    ('__import__("os").system("id")', 0, "only calls of the language's functions"),
    ('__import__("os")', 0, "unknown function '__import__'"),
    ("open('/etc/passwd')", 0, "unknown function 'open'"),
    ("eval('1')", 0, "unknown function 'eval'"),
    ("A.__class__", 2, "attribute access"),
    ("().__class__", 3, "attribute access"),
    ("Msg.C.real.imag", 11, "attribute access"),
    ("A[0]", 0, "subscripts"),
    ("(lambda: 1)()", 0, "only calls of the language's functions"),
    ("[a for a in B]", 0, "comprehensions"),
    ("{a for a in B}", 0, "comprehensions"),
    ("abs(x=1)", 6, "keyword arguments"),
    ("abs(*B)", 0, "starred"),
    ('f"{A}" == A', 0, "f-strings"),
    ("(A := 1)", 1, "assignment"),
    ("A if B else Msg.C", 0, "conditional expressions"),
    ("A << 2", 0, "operator not allowed"),
    ("A @ B", 0, "operator not allowed"),
    ("~A", 0, "operator not allowed"),
    ("A in B", 0, "comparison not allowed"),
    ("A is None", 0, "comparison not allowed"),
    ('"s" * 3', 0, "a string is allowed only compared with a signal"),
    ("{1: 2}", 0, "dicts"),
    ("(1, 2)", 0, "tuples"),
    ("None", 0, "constant None"),
    ("b'x' == A", 0, "constant b'x'"),
    ("prev(A + 1)", 5, "expected a signal name"),
    ("last_window_avg(A, B)", 19, "expected a number"),
    ("last_window_avg(A, 0)", 19, "window must be"),
    ("$variable.`A`.b", 14, "attribute access"),
]


@pytest.mark.parametrize(("fragment", "offset", "why"), HOSTILE)
def test_hostile_expressions_are_refused_with_their_position(fragment: str, offset: int, why: str) -> None:
    prefix = "$variable.`Msg.C` > 1 && ("  # FleetWise syntax before it: positions are in the text as written
    with pytest.raises(ExpressionError) as err:
        parse(prefix + fragment + ")")
    assert why in err.value.why
    assert err.value.position == len(prefix) + offset + 1, (fragment, err.value)


def test_syntax_errors_and_limits_have_positions() -> None:
    with pytest.raises(ExpressionError, match="position 10: syntax error"):
        parse("A > 1 && > 2")
    with pytest.raises(ExpressionError, match="position 1: empty expression"):
        parse("   ")
    with pytest.raises(ExpressionError, match="unterminated"):
        parse("$variable.`A > 1")
    with pytest.raises(ExpressionError, match="longer than 4096"):
        parse("A" * 5000)
    with pytest.raises(ExpressionError):
        parse("(" * 300 + "A" + ")" * 300)


def test_an_expression_of_too_many_parts_is_refused() -> None:
    with pytest.raises(ExpressionError, match="too large"):
        parse(" + ".join(["A"] * 600) + " > 1")


def test_campaign_validation_names_campaign_field_and_position() -> None:
    with pytest.raises(ValidationError) as err:
        Campaign.model_validate({"id": "hard-brake", "trigger": {"expr": "BrakePressure > 80 and x.__dict__"}})
    assert "campaign 'hard-brake': trigger.expr: position 26: attribute access not allowed" in str(err.value)
    with pytest.raises(ValidationError, match=r"campaign 'h': trigger.reset: position 1: unknown function 'exec'"):
        Campaign.model_validate({"id": "h", "trigger": {"set": "A > 1", "reset": "exec('x')"}})
    with pytest.raises(ValidationError, match="give either trigger or period_ms"):
        Campaign.model_validate({"id": "x"})
    with pytest.raises(ValidationError, match="mode while needs min_interval_ms"):
        Campaign.model_validate({"id": "x", "trigger": {"expr": "A > 1", "mode": "while"}})
    with pytest.raises(ValidationError, match="set and reset go together"):
        Campaign.model_validate({"id": "x", "trigger": {"set": "A > 1"}})
    with pytest.raises(ValidationError, match="expiry must be after start"):
        Campaign.model_validate({"id": "x", "period_ms": 1000, "start": "2026-01-02T00:00:00Z", "expiry": "2026-01-01"})
    one = Campaign.model_validate({"id": "x", "period_ms": 1000})
    with pytest.raises(ValueError, match="campaign 'x': id used twice"):
        check_campaigns([one, one])


ALLOWED_NAMES = set(MATH) | set(WINDOW_FUNCTIONS)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("AB.C()[]{}_$`&|!=<>+-*/%~@:;,'\" \n0123456789eaclmbdpxrn")), max_size=60))
def test_any_text_is_refused_cleanly_or_compiles_to_whitelisted_names_only(text: str) -> None:
    try:
        parsed = parse(text)
    except ExpressionError as exc:
        assert 1 <= exc.position <= len(text) + 1
        return
    fn = compile_condition(parsed, lambda name: 0, lambda s, label: 0.0, lambda f, s, ms: 0)
    assert set(fn.__code__.co_names) <= ALLOWED_NAMES
    assert fn.__globals__["__builtins"+"__"] == {}


@settings(max_examples=200, deadline=None)
@given(prefix=st.lists(st.sampled_from(["A > 1", "$variable.`Msg.C` < 2", "!(B == 3)", "abs(A) >= 0"]),
                       max_size=4),
       joiner=st.sampled_from([" && ", " and ", " || ", " or "]),
       hostile=st.sampled_from(HOSTILE))
def test_hostile_fragments_after_any_valid_prefix_point_at_themselves(prefix, joiner, hostile) -> None:
    fragment, offset, why = hostile
    head = "".join(p + joiner for p in prefix) + "("
    with pytest.raises(ExpressionError) as err:
        parse(head + fragment + ")")
    assert why in err.value.why and err.value.position == len(head) + offset + 1


def _expr(depth: int):
    """Random expressions in both syntaxes with the value they must compute."""
    leaf = st.one_of(
        st.sampled_from([("A", "$variable.`A`", 3.0), ("B", "B", -2.5), ("Msg.C", "$variable.`Msg.C`", 10.0)]),
        st.integers(-5, 5).map(lambda n: (str(n), str(n), float(n))))
    if depth == 0:
        return leaf

    sub = _expr(depth - 1)

    def binop(args):
        (pa, fa, va), op, (pb, fb, vb) = args
        value = {"+": va + vb, "-": va - vb, "*": va * vb}[op]
        return f"({pa} {op} {pb})", f"({fa} {op} {fb})", value

    def call(args):
        fn, (pa, fa, va), (pb, fb, vb) = args
        value = {"max": max(va, vb), "min": min(va, vb)}[fn]
        return f"{fn}({pa}, {pb})", f"{fn}({fa}, {fb})", value

    return st.one_of(leaf, st.tuples(sub, st.sampled_from("+-*"), sub).map(binop),
                     st.tuples(st.sampled_from(["max", "min"]), sub, sub).map(call),
                     sub.map(lambda a: (f"abs({a[0]})", f"abs({a[1]})", abs(a[2]))))


def _cond(depth: int):
    num = _expr(2)
    cmp = st.tuples(num, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), num).map(
        lambda x: (f"{x[0][0]} {x[1]} {x[2][0]}", f"{x[0][1]} {x[1]} {x[2][1]}",
                   {"<": x[0][2] < x[2][2], "<=": x[0][2] <= x[2][2], ">": x[0][2] > x[2][2],
                    ">=": x[0][2] >= x[2][2], "==": x[0][2] == x[2][2], "!=": x[0][2] != x[2][2]}[x[1]]))
    if depth == 0:
        return cmp
    sub = _cond(depth - 1)
    return st.one_of(
        cmp,
        st.tuples(sub, sub).map(lambda x: (f"({x[0][0]}) and ({x[1][0]})", f"({x[0][1]}) && ({x[1][1]})", x[0][2] and x[1][2])),
        st.tuples(sub, sub).map(lambda x: (f"({x[0][0]}) or ({x[1][0]})", f"({x[0][1]}) || ({x[1][1]})", x[0][2] or x[1][2])),
        sub.map(lambda x: (f"not ({x[0]})", f"!({x[1]})", not x[2])))


@settings(max_examples=150, deadline=None)
@given(_cond(2))
def test_random_conditions_compute_the_same_in_both_syntaxes(case) -> None:
    python, fleetwise, want = case
    assert evaluate(python) == want
    assert evaluate(fleetwise) == want
    assert not math.isnan(float(want))


@pytest.mark.parametrize(("text", "why", "at"), [
    ("abs(A, B) > 1", "abs() takes 1 arguments", 1),
    ("1 < min(A)", "min() takes 2 to 16 arguments", 5),
    ("log(A, 2, 3) > 0", "log() takes 1 to 2 arguments", 1),
    ("prev(A, B) > 1", "prev() takes one signal", 1),
    ("prev(A + 1) > 1", "expected a signal name here (Signal, Message.Signal or bus.Message.Signal)", 6),
    ("~A > 1", "operator not allowed (allowed: not, -, +)", 1),
    ("A << 2 > 1", "operator not allowed (allowed: + - * / % // **)", 1),
    ('A > "s" * 3', "a string is allowed only compared with a signal (an enum label)", 5),
    ("__A > 1", "this name not allowed (only Signal, Message.Signal or bus.Message.Signal)", 1),
    ("A > 1 && $variable.`B > 2", "unterminated $variable.`...` reference", 10),
    ("A > 1 && $variable.`  ` > 2", "empty $variable.`` reference", 10),
    ("A > 1 and last_window_avg(A)", "last_window_avg() takes a signal and a window in ms", 11),
    ("last_window_avg(A, True) > 1", "expected a number here", 20),
    ("last_window_avg(A, 0.5) > 1", "window must be 1 ms .. 1 day", 20),
    ("last_window_avg(A, 86400001) > 1", "window must be 1 ms .. 1 day", 20),
    ("last_window_avg(A, -1000) > 1", "window must be 1 ms .. 1 day", 20),
    ("abs(x=1) > 0", "keyword arguments not allowed", 7),
    ("abs(*B) > 0", "starred arguments not allowed", 1),
    ("A.b(1) > 0", "only calls of the language's functions are allowed", 1),
    ("A in B", "comparison not allowed (allowed: == != < <= > >=)", 1),
    ("(A > 1 and\nB.__class__)", "attribute access not allowed (only Signal, Message.Signal or bus.Message.Signal)", 14),
    ("(A > 1 and\n  B > 2 and\nC.__class__ > 0 and\nD)", "attribute access not allowed (only Signal, Message.Signal or "
                                                     "bus.Message.Signal)", 26),
    ("foo(A)", "unknown function 'foo' (allowed: prev, delta, changed, isNull, last_window_min, last_window_max, "
               "last_window_avg, prev_last_window_min, prev_last_window_max, prev_last_window_avg, abs, min, max, "
               "pow, log, ceil, floor)", 1),
])
def test_each_refusal_says_exactly_why_and_where(text: str, why: str, at: int) -> None:
    with pytest.raises(ExpressionError) as err:
        parse(text)
    assert (err.value.why, err.value.position) == (why, at)


def test_what_an_expression_reads_windows_per_sample_signals_and_labels() -> None:
    parsed = parse('last_window_avg(A, 1000) > last_window_max(Msg.C, -(-5)) and last_window_min(A, +1) < 2'
                   ' and last_window_avg(A, 86400000) > 0 and last_window_avg(A, 2.5) >= 0')
    assert [(w.signal, w.ms) for w in parsed.windows] == [("A", 1000.0), ("Msg.C", 5.0), ("A", 1.0), ("A", 86_400_000.0),
                                                           ("A", 2.5)]
    assert parse("prev(A) > 0 and isNull(B) and delta(Msg.C) > 1 and changed(bus.Msg.D)").per_sample == {
        "A", "Msg.C", "bus.Msg.D"}, "isNull reads no previous value"
    assert parse('"Park" == Gear and Mode != "Eco"').labels == [("Gear", "Park", 1), ("Mode", "Eco", 28)]


def test_windows_are_bound_to_the_slots_the_engine_gives() -> None:
    from types import SimpleNamespace

    asked = []

    def window(fn: str, signal: str, ms: float) -> int:
        asked.append((fn, signal, ms))
        return len(asked) - 1

    parsed = parse("last_window_avg(A, 1000) > 2 and prev_last_window_max(Msg.C, 50) < 9")
    fn = compile_condition(parsed, ["A", "Msg.C"].index, lambda s, label: 0.0, window)
    assert asked == [("last_window_avg", "A", 1000.0), ("prev_last_window_max", "Msg.C", 50.0)]
    slots = [SimpleNamespace(last_window_avg=3.0), SimpleNamespace(prev_last_window_max=8.0)]
    assert fn([0.0, 0.0], [None, None], slots) is True
    slots[1].prev_last_window_max = 9.0
    assert fn([0.0, 0.0], [None, None], slots) is False


def test_one_parsed_expression_compiles_for_any_layout_of_values() -> None:
    """A config swap compiles the checked expressions again with other slots: the parsed tree is not
    changed by compiling it."""
    parsed = parse("A - Msg.C == 7")
    first = compile_condition(parsed, ["A", "Msg.C"].index, lambda s, label: 0.0, lambda f, s, ms: 0)
    second = compile_condition(parsed, ["Msg.C", "X", "A"].index, lambda s, label: 0.0, lambda f, s, ms: 0)
    assert first([10.0, 3.0], [None, None], []) is True
    assert second([3.0, 0.0, 10.0], [None] * 3, []) is True
    assert first.__code__.co_filename == "<campaign>", "an error's traceback names the campaign code"


def test_fleetwise_operators_inside_string_labels_stay_text() -> None:
    """FleetWise's && || ! are translated outside strings only: a label may hold them, and escaped quotes."""
    parsed = parse('Gear == "P&&R" && Mode != \'a||!b\' || Note == "say \\"hi\\" && bye"')
    assert [(s, label) for s, label, _ in parsed.labels] == [("Gear", "P&&R"), ("Mode", "a||!b"), ("Note", 'say "hi" && bye')]
    assert evaluate("A>1&&B<0") is True and evaluate("A<1||!(B<0)") is False
