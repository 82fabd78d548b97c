"""The campaign condition language: a small, safe subset of Python expressions.

A condition is parsed with Python's own parser (`ast`, eval mode) and then checked node by node
against a whitelist: signal references (`Speed`, `Message.Signal`, `bus.Message.Signal`), numbers,
strings (enum labels, compared with a signal), comparisons, `and or not`, arithmetic and a fixed set
of functions. Anything else (attribute access on a value, subscripts, calls of other names,
keywords, comprehensions, lambdas, f-strings, walrus) is refused with its position. FleetWise's
syntax is accepted too (`$variable.\\`Vehicle.Speed\\``, `&&`, `||`, `!`, `true`, `false`), so its
campaigns port unchanged.

What is compiled is never the user's text: a new tree is built from the checked nodes only (signal
references become indexes into the engine's value lists, numbers become floats and `**` is pow() in
floats, so `10 ** 10 ** 10` or an integer signal to its own power overflows instead of hanging), compiled
once per config, and run with no builtins.
"""

from __future__ import annotations

import ast
import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_LENGTH = 4096      # characters of one expression
MAX_NODES = 512        # syntax nodes of one expression (bounds compile time and evaluation cost)

# name -> (number of arguments, whether the first argument must be a signal reference)
SIGNAL_FUNCTIONS = {"prev": 1, "delta": 1, "changed": 1, "isNull": 1}
WINDOW_FUNCTIONS = ("last_window_min", "last_window_max", "last_window_avg",
                    "prev_last_window_min", "prev_last_window_max", "prev_last_window_avg")
MATH_FUNCTIONS: dict[str, tuple[int, int]] = {  # name -> (least, most) arguments
    "abs": (1, 1), "min": (2, 16), "max": (2, 16), "pow": (2, 2), "log": (1, 2), "ceil": (1, 1), "floor": (1, 1),
}
_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.FloorDiv, ast.Pow)
_WHAT = {ast.Attribute: "attribute access", ast.Subscript: "subscripts", ast.Lambda: "lambdas",
         ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
         ast.GeneratorExp: "comprehensions", ast.NamedExpr: "assignment (:=)", ast.JoinedStr: "f-strings",
         ast.Starred: "starred arguments", ast.IfExp: "conditional expressions", ast.Await: "await",
         ast.Yield: "yield", ast.YieldFrom: "yield", ast.List: "lists", ast.Tuple: "tuples", ast.Dict: "dicts",
         ast.Set: "sets", ast.Slice: "slices"}


class ExpressionError(ValueError):
    """An expression that is not in the language; `position` is 1-based, in the text as written."""

    def __init__(self, why: str, position: int) -> None:
        self.why, self.position = why, position
        super().__init__(f"position {position}: {why}")


@dataclass(frozen=True)
class Reference:
    """A signal reference as written (`Speed`, `Brake.Pressure`, `` `Vehicle.Speed` ``) and where."""

    name: str
    position: int


@dataclass(frozen=True)
class Window:
    """A fixed-window statistic an expression asks for: `last_window_avg(Speed, 1000)`."""

    signal: str
    ms: float


@dataclass
class Parsed:
    """A checked expression: its tree (positions in the original text) and what it reads."""

    text: str
    tree: ast.Expression
    references: list[Reference] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    per_sample: set[str] = field(default_factory=set)  # signals read by prev/delta/changed
    labels: list[tuple[str, str, int]] = field(default_factory=list)  # (signal, label, position)
    fleetwise: set[str] = field(default_factory=set)  # names written as $variable.`...`


# --------------------------------------------------------------------------- FleetWise syntax
def _translate(text: str) -> tuple[str, list[int], dict[str, str]]:
    """FleetWise syntax to Python: returns the new text, the original index of each of its
    characters (for positions), and the placeholder names of `$variable.\\`...\\`` references."""
    out: list[str] = []
    where: list[int] = []
    names: dict[str, str] = {}
    i, n = 0, len(text)

    def emit(s: str, at: int) -> None:
        out.append(s)
        where.extend([at] * len(s))

    while i < n:
        c = text[i]
        if c in "'\"":  # a string literal passes through unchanged (its quotes may contain anything)
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            for k in range(i, min(j + 1, n)):
                emit(text[k], k)
            i = j + 1
        elif text.startswith("$variable.`", i):
            end = text.find("`", i + 11)
            if end < 0:
                raise ExpressionError("unterminated $variable.`...` reference", i + 1)
            ref = text[i + 11:end]
            if not ref.strip():
                raise ExpressionError("empty $variable.`` reference", i + 1)
            placeholder = f"_fw{len(names)}_"
            names[placeholder] = ref
            emit(placeholder, i)
            i = end + 1
        elif text.startswith("&&", i) or text.startswith("||", i):
            emit(" and " if c == "&" else " or ", i)
            i += 2
        elif c == "!" and not text.startswith("!=", i):
            emit(" not ", i)
            i += 1
        elif (c.isalpha() or c == "_") and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_.")):
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            emit({"true": "True", "false": "False"}.get(word, word), i)
            i = j
        else:
            emit(c, i)
            i += 1
    where.append(n)  # the end of the text
    return "".join(out), where, names


# --------------------------------------------------------------------------- checking
class _Checker:
    def __init__(self, text: str, source: str, where: list[int], names: dict[str, str]) -> None:
        self.text, self.where, self.names = text, where, names
        self.lines = source.split("\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)
        self.parsed: Parsed | None = None
        self.nodes = 0

    def position(self, node: ast.AST) -> int:
        """1-based position in the original text (ast's columns count UTF-8 bytes)."""
        lineno, col = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        chars = len(line.encode()[:col].decode(errors="ignore"))
        index = min(self.starts[min(lineno, len(self.starts)) - 1] + chars, len(self.where) - 1)
        return self.where[index] + 1

    def fail(self, node: ast.AST, why: str) -> ExpressionError:
        if isinstance(node, ast.Attribute) and node.end_lineno is not None and node.end_col_offset is not None:
            at = ast.expr(lineno=node.end_lineno, col_offset=node.end_col_offset - len(node.attr.encode()))
            return ExpressionError(why, self.position(at))  # at the attribute's name, not the object's
        return ExpressionError(why, self.position(node))

    def reference(self, node: ast.AST) -> str | None:
        """The signal name of a Name or a Name.Name[.Name] chain, else None."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        fleetwise = self.names.get(node.id)
        if fleetwise is not None:
            if parts:
                return None  # $variable.`A.B`.C
            assert self.parsed is not None
            self.parsed.fleetwise.add(fleetwise)
            return fleetwise
        parts.append(node.id)
        if len(parts) > 3:
            return None
        name = ".".join(reversed(parts))
        if "__" in name:
            return None
        return name

    def signal(self, node: ast.AST) -> str:
        name = self.reference(node)
        if name is None:
            raise self.fail(node, "expected a signal name here (Signal, Message.Signal or bus.Message.Signal)")
        assert self.parsed is not None
        self.parsed.references.append(Reference(name, self.position(node)))
        return name

    def number(self, node: ast.AST) -> float:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.number(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Constant) and (type(node.value) is int or type(node.value) is float):
            return float(node.value)
        raise self.fail(node, "expected a number here")

    def check(self, node: ast.AST) -> ast.expr:
        """Check `node` and return the tree to compile (signal references replaced by `_r(name)`)."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"expression too large (more than {MAX_NODES} parts)")
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(node.op, [self.check(v) for v in node.values])
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
                raise self.fail(node, "operator not allowed (allowed: not, -, +)")
            return ast.UnaryOp(node.op, self.check(node.operand))
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _ARITH):
                raise self.fail(node, "operator not allowed (allowed: + - * / % // **)")
            if isinstance(node.op, ast.Pow):  # as pow(), in floats: integer signals (`Odo ** Odo`) overflow, not hang
                return ast.Call(ast.Name("_m_pow", ast.Load()), [self.check(node.left), self.check(node.right)], [])
            return ast.BinOp(self.check(node.left), node.op, self.check(node.right))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Constant):
            if type(node.value) is bool:
                return ast.Constant(node.value)
            if type(node.value) is int or type(node.value) is float:
                return ast.Constant(float(node.value))
            if isinstance(node.value, str):
                raise self.fail(node, "a string is allowed only compared with a signal (an enum label)")
            raise self.fail(node, f"constant {node.value!r} not allowed")
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name | ast.Attribute):
            name = self.reference(node)
            if name is None:
                what = "attribute access" if isinstance(node, ast.Attribute) else "this name"
                raise self.fail(node, f"{what} not allowed (only Signal, Message.Signal or bus.Message.Signal)")
            return self.ref_node(self.signal(node))
        what = _WHAT.get(type(node), type(node).__name__)
        raise self.fail(node, f"{what} not allowed")

    @staticmethod
    def ref_node(name: str, kind: str = "_r") -> ast.expr:
        return ast.Call(ast.Name(kind, ast.Load()), [ast.Constant(name)], [])

    def compare(self, node: ast.Compare) -> ast.expr:
        operands = [node.left, *node.comparators]
        for op in node.ops:
            if not isinstance(op, _COMPARE):
                raise self.fail(node, "comparison not allowed (allowed: == != < <= > >=)")
        checked: list[ast.expr] = []
        for k, operand in enumerate(operands):
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                neighbours = [operands[j] for j in (k - 1, k + 1) if 0 <= j < len(operands)]
                signals = [s for s in map(self.reference, neighbours) if s is not None]
                if not signals:
                    raise self.fail(operand, "a string is allowed only compared with a signal (an enum label)")
                assert self.parsed is not None
                self.parsed.labels.append((signals[0], operand.value, self.position(operand)))
                checked.append(ast.Call(ast.Name("_label", ast.Load()),
                                        [ast.Constant(signals[0]), ast.Constant(operand.value)], []))
            else:
                checked.append(self.check(operand))
        return ast.Compare(checked[0], list(node.ops), checked[1:])

    def call(self, node: ast.Call) -> ast.expr:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only calls of the language's functions are allowed")
        name = node.func.id
        if node.keywords:
            raise self.fail(node.keywords[0].value, "keyword arguments not allowed")
        args = node.args
        if any(isinstance(a, ast.Starred) for a in args):
            raise self.fail(node, "starred arguments not allowed")
        assert self.parsed is not None
        if name in SIGNAL_FUNCTIONS:
            if len(args) != 1:
                raise self.fail(node, f"{name}() takes one signal")
            signal = self.signal(args[0])
            if name != "isNull":
                self.parsed.per_sample.add(signal)
            return self.ref_node(signal, f"_{name}")
        if name in WINDOW_FUNCTIONS:
            if len(args) != 2:
                raise self.fail(node, f"{name}() takes a signal and a window in ms")
            signal = self.signal(args[0])
            ms = self.number(args[1])
            if not 1 <= ms <= 86_400_000:
                raise self.fail(args[1], "window must be 1 ms .. 1 day")
            self.parsed.windows.append(Window(signal, ms))
            return ast.Call(ast.Name("_window", ast.Load()),
                            [ast.Constant(name), ast.Constant(signal), ast.Constant(ms)], [])
        if name in MATH_FUNCTIONS:
            least, most = MATH_FUNCTIONS[name]
            if not least <= len(args) <= most:
                raise self.fail(node, f"{name}() takes {least}" + (f" to {most}" if most > least else "")
                                + " arguments")
            return ast.Call(ast.Name(f"_m_{name}", ast.Load()), [self.check(a) for a in args], [])
        raise self.fail(node, f"unknown function {name!r} (allowed: "
                        + ", ".join([*SIGNAL_FUNCTIONS, *WINDOW_FUNCTIONS, *MATH_FUNCTIONS]) + ")")


def parse(text: str) -> Parsed:
    """Check an expression (FleetWise or Python syntax) against the language; raises ExpressionError."""
    if not isinstance(text, str):
        raise ExpressionError("expected a string", 1)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters", MAX_LENGTH + 1)
    if not text.strip():
        raise ExpressionError("empty expression", 1)
    if "\x00" in text:
        raise ExpressionError("NUL character", text.index("\x00") + 1)
    source, where, names = _translate(text)
    stripped = len(source) - len(source.lstrip())  # eval mode refuses leading blanks ("unexpected indent")
    source, where = source[stripped:], where[stripped:]
    try:
        with warnings.catch_warnings():  # SyntaxWarnings ("is" with a literal, ...) are for programmers
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        lines = source.split("\n")
        lineno = max(1, min(exc.lineno or 1, len(lines)))
        offset = sum(len(line) + 1 for line in lines[:lineno - 1]) + (exc.offset or 0) - 1
        if not exc.offset:  # Python reports an unexpected end as offset 0
            offset = len(source.rstrip())
        raise ExpressionError(f"syntax error: {exc.msg}", where[min(offset, len(where) - 1)] + 1) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError(f"expression cannot be parsed: {type(exc).__name__}", 1) from None
    checker = _Checker(text, source, where, names)
    checker.parsed = Parsed(text, tree)
    try:
        body = checker.check(tree.body)
    except RecursionError:
        raise ExpressionError("expression nested too deeply", 1) from None
    checker.parsed.tree = ast.fix_missing_locations(ast.Expression(body))
    return checker.parsed


# --------------------------------------------------------------------------- compiling
def _safe_log(x: float, base: float = math.e) -> float:
    return math.log(x, base)


MATH: dict[str, Callable[..., float]] = {
    "_m_abs": abs, "_m_min": min, "_m_max": max, "_m_pow": lambda a, b: float(a) ** float(b),
    "_m_log": _safe_log, "_m_ceil": math.ceil, "_m_floor": math.floor,
}


class _Bind(ast.NodeTransformer):
    """Signal references to indexes into the engine's lists, known only once signals are resolved."""

    def __init__(self, index: Callable[[str], int], label: Callable[[str, str], float],
                 window: Callable[[str, str, float], int]) -> None:
        self.index, self.label, self.window = index, label, window

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        kind = node.func.id if isinstance(node.func, ast.Name) else ""
        args: list[Any] = [a.value for a in node.args if isinstance(a, ast.Constant)]  # as check() wrote them
        if kind == "_label":
            return ast.Constant(self.label(args[0], args[1]))
        if kind == "_window":
            return _sub("_w", self.window(args[0], args[1], args[2]), attr=args[0])
        if kind in ("_r", "_prev", "_delta", "_changed", "_isNull"):
            i = self.index(args[0])
            value, prev = _sub("_v", i), _sub("_p", i)
            if kind == "_r":
                return value
            if kind == "_prev":
                return prev
            if kind == "_isNull":
                return ast.Compare(value, [ast.Is()], [ast.Constant(None)])
            if kind == "_delta":
                return ast.BinOp(value, ast.Sub(), prev)
            return ast.Compare(value, [ast.NotEq()], [prev])
        return node


def _sub(name: str, i: int, attr: str | None = None) -> ast.expr:
    node: ast.expr = ast.Subscript(ast.Name(name, ast.Load()), ast.Constant(i), ast.Load())
    if attr is not None:
        node = ast.Attribute(node, attr, ast.Load())
    return node


class Condition(Protocol):
    """A compiled condition: called with (values, previous values, windows); `source` is its expression."""

    source: str

    def __call__(self, _v: list, _p: list, _w: list, /) -> object: ...


def compile_condition(parsed: Parsed, index: Callable[[str], int], label: Callable[[str, str], float],
                      window: Callable[[str, str, float], int]) -> Condition:
    """The checked tree as a function of (values, previous values, windows); compiled once per config.

    `index(name)` gives a resolved signal's slot in the value lists, `label(signal, text)` an enum
    label's number, `window(fn, signal, ms)` a window's slot; each raises ExpressionError itself.
    """
    body = _Bind(index, label, window).visit(copy.deepcopy(parsed.tree))
    lam = ast.Expression(ast.Lambda(
        ast.arguments(posonlyargs=[], args=[ast.arg("_v"), ast.arg("_p"), ast.arg("_w")], kwonlyargs=[],
                      kw_defaults=[], defaults=[]), body.body))
    code = compile(ast.fix_missing_locations(lam), "<campaign>", "eval")
    fn = eval(code, {"__builtins__": {}, **MATH})  # noqa: S307 - a tree built from whitelisted nodes only
    fn.source = ast.unparse(body.body)  # the same expression, for generated code to inline (names _v, _p, _w, MATH)
    return fn
