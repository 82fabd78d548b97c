#!/usr/bin/env python3
"""Mutation testing of the core modules with mutmut: does a one-token bug make a fast test fail?

    python3 tools/mutation.py                     # every core module
    python3 tools/mutation.py store codec         # some of them
    python3 tools/mutation.py --changed main      # the functions of core modules that differ from `main`
    python3 tools/mutation.py codec --survivors   # and print each surviving mutant's diff
    python3 tools/mutation.py codec --report      # score the last run again (e.g. after listing equivalents)

Each module is mutated in a scratch copy of the tree (.mutation/<module>/, git-ignored), against
only its fast tests (no broker, no subprocess agent): a mutant only a slow integration test catches
counts as surviving. The score is killed / (all mutants - accepted equivalents); mutants no test
reaches count against it. Exit 1 when a module scores below its floor (FLOORS, raised as tests
improve, never lowered) or mutmut fails. docs/testing.md has the scores and the equivalent mutants;
tools/mutation-equivalent.txt lists the accepted ones by what they change (function, line before and
after: `mutant_key`), with the reason; a mutant that only changes the letter case of SQL text is
accepted by rule (SQLite ignores it).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutation"
EQUIVALENT = ROOT / "tools" / "mutation-equivalent.txt"

# The collector/decoder exactness test compares against cantools over drives of every bundled DBC
# (20 cases, ~1 s each); for mutants the extreme-layout DBC and two cases of the edge-case DBC stand
# for them all (with -k: every test not of that family stays selected).
EXACT = ["tests/test_collect_exact.py"]
EXACT_K = "(not collector_keeps or extreme or edge.dbc-per-message-labels or edge.dbc-per-signal-numbers)"
# module -> (files to mutate, the fast tests (and pytest selection) that should catch their mutants):
# in-process tests of seconds, no broker, no agent process, hypothesis with few examples.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "store": (["agent/store/*"], ["tests/test_store.py", "tests/test_store_faults.py", "tests/test_store_integrity.py",
                                  "tests/test_store_spill.py", "tests/test_store_wal.py", "tests/test_store_status.py"]),
    "codec": (["agent/codec/*"], ["tests/test_codec_batcher.py", "tests/test_pipeline_properties.py",
                                  "-k", "not random_layouts and not previous_wire_version"]),
    "batcher": (["agent/batcher.py"], ["tests/test_codec_batcher.py", "tests/test_window.py"]),
    "collect": (["agent/collect/*"], ["tests/test_policy.py", "tests/test_collector.py", "tests/test_codegen.py", *EXACT,
                                      "-k", f"not debug_codegen and {EXACT_K}"]),
    "decode": (["agent/decode/*"], ["tests/test_fast_decode.py", "tests/test_decode_units.py", "tests/test_parse_cache.py",
                                    *EXACT, "-k", EXACT_K]),
    # the property-based hostile-document tests run hundreds of examples a mutant, and the sloppy OEM
    # database takes cantools 10 s to load: the listed cases stand in
    "desired": (["agent/twin/desired.py"], ["tests/test_desired.py", "tests/test_control.py",
                                            "-k", "not hostile and not sloppy"]),
    # the parsers of what the cloud sends: files it names, the remote databases and software update
    # documents, the campaign expression language; and the environment's VEHICLE_AGENT_* names
    "download": (["agent/download.py"], ["tests/test_download_fields.py", *(f"tests/test_download.py::test_{name}" for name in (
        "content_range_round_trips", "content_range_is_total", "retry_after_is_bounded", "header_numbers_are_ascii_decimals",
        "redact_never_shows_the_query_or_credentials", "redact_is_total"))]),
    "databases_doc": (["agent/remotedb/document.py"], ["tests/test_download_fields.py", *(
        f"tests/test_remote_databases.py::test_{name}" for name in (
            "any_databases_value_is_a_document_or_a_refusal_that_never_shows_a_secret",
            "a_name_that_is_the_folder_of_another_is_refused"))]),
    "ota_model": (["agent/ota/model.py"], ["tests/test_ota_model.py", "tests/test_download_fields.py"]),
    "environment": (["agent/config/environment.py"], ["tests/test_environment.py",
                    "tests/test_config.py::test_any_environment_is_a_config_or_a_refusal_that_never_shows_a_value"]),
    # (under mutmut's trampolines a 600-term sum nests too deeply before it counts as too large: that test
    # is left out, and the one that reads docs/, which the scratch copy has not)
    "expr": (["agent/campaigns/expr.py"], ["tests/test_campaigns_expr.py", "tests/test_campaigns_engine.py",
                                        "-k", "not random_braking and not too_many_parts and not documented_fleetwise"]),
}
# Modules scored on some of their functions only (mutmut name patterns, as `changed_functions` makes them):
# the parsers of a file whose other functions only slow tests reach (download.py's HTTP client, against
# the local HTTPS server). Unlisted modules are scored whole.
FUNCTIONS: dict[str, list[str]] = {
    "download": [f"agent.download.x_{name}__mutmut_*" for name in ("https_url_problem", "sha256_problem", "_refuse",
                                                                    "redact", "parse_content_range",
                                                                    "parse_retry_after", "header_int")]
    + ["agent.download.xǁFileSpecǁproblem__mutmut_*"],
}
# The least score (percent) each module must keep; measured scores are in docs/testing.md.
FLOORS = {"store": 90, "codec": 50, "batcher": 70, "collect": 85, "decode": 75, "desired": 65,
          "download": 90, "databases_doc": 90, "ota_model": 90, "environment": 90, "expr": 85}
KILLED = {"killed", "timeout", "segfault", "suspicious"}  # the tests noticed


def changed_modules(base: str) -> list[str]:
    """Core modules with a file that differs between `base` and the working tree."""
    out = subprocess.run(["git", "diff", "--name-only", base], cwd=ROOT, capture_output=True, text=True, check=True)
    files = out.stdout.split()
    return [m for m, (globs, _) in MODULES.items() if any(fnmatch.fnmatch(f, g) for f in files for g in globs)]


HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@", re.M)


def changed_functions(module: str, base: str) -> list[str]:
    """mutmut name patterns (`<module>.x_<function>__mutmut_*`, `<module>.xǁ<Class>ǁ<method>__mutmut_*`)
    of the module's functions and methods with a line that differs between `base` and the working tree
    (a removed line counts for the function it was removed from): a change is mutation-tested where it
    is, so a small change to a large module costs a few functions' mutants, not the module's."""
    globs = MODULES[module][0]
    names = subprocess.run(["git", "diff", "--name-only", base], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    patterns = []
    for file in sorted(f for f in names if f.endswith(".py") and any(fnmatch.fnmatch(f, g) for g in globs)):
        if not (ROOT / file).exists():
            continue
        diff = subprocess.run(["git", "diff", "-U0", base, "--", file], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
        lines = {n for start, count in HUNK.findall(diff)
                 for n in range(int(start), int(start) + max(int(count or 1), 1))}
        dotted = file.removesuffix(".py").replace("/", ".")
        tree = ast.parse((ROOT / file).read_text())
        for node in tree.body:
            members = [(None, node)] if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else \
                [(node.name, m) for m in node.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)] \
                if isinstance(node, ast.ClassDef) else []
            for cls, fn in members:
                first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
                if lines & set(range(first, (fn.end_lineno or fn.lineno) + 1)):
                    patterns.append(f"{dotted}.x_{fn.name}__mutmut_*" if cls is None else
                                    f"{dotted}.xǁ{cls}ǁ{fn.name}__mutmut_*")
    return patterns


def in_selection(module: str, patterns: list[str]) -> list[str]:
    """The name patterns of `patterns` that a module scored on some functions only (FUNCTIONS) scores."""
    if module not in FUNCTIONS:
        return patterns
    return [p for p in patterns if any(fnmatch.fnmatch(p.replace("*", "1"), f) for f in FUNCTIONS[module])]


def scratch_copy(module: str) -> Path:
    """A fresh copy of what the tests need, with a [tool.mutmut] section for this module."""
    globs, tests = MODULES[module]
    work = SCRATCH / module
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("agent", "tests", "config"):
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    quoted = lambda items: ", ".join(f'"{i}"' for i in items)  # noqa: E731
    (work / "pyproject.toml").write_text(pyproject + f"""
[tool.mutmut]
source_paths = ["agent/"]
only_mutate = [{quoted(globs)}]
pytest_add_cli_args_test_selection = [{quoted(tests)}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not durability and not iothub and not mqtt and not vcan"]
also_copy = ["config/"]
""")
    return work


def equivalents() -> dict[str, str]:
    """Accepted equivalent mutants: key (`mutant_key`) -> reason. A line is `FUNCTION || OLD || NEW || REASON`."""
    if not EQUIVALENT.exists():
        return {}
    out = {}
    for number, line in enumerate(EQUIVALENT.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            parts = [" ".join(part.split()) for part in line.split(" || ")]
            if len(parts) != 4 or not all(parts[i] for i in (0, 3)):
                raise SystemExit(f"{EQUIVALENT.relative_to(ROOT)}:{number}: expected FUNCTION || OLD LINE || NEW LINE"
                                 f" || REASON (a survivor's line printed by this tool is its first three)")
            out[" || ".join(parts[:3])] = parts[3]
    return out


def mutant_key(name: str, diff: str) -> str:
    """A mutant by what it changes, not by its number: its function (mutmut's name without
    `__mutmut_N`) and its first changed line before and after, whitespace collapsed. mutmut numbers
    a function's mutants in order, so any edit of the function renumbers them; this key stays until
    the mutated line itself changes. (The same line twice in one function, mutated alike, is one key.)"""
    old, new = diff_lines(diff)
    return " || ".join([name.split("__mutmut_")[0], " ".join(old[0].split()) if old else "",
                        " ".join(new[0].split()) if new else ""])


SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA|FROM|WHERE|VALUES)\b", re.I)


def diff_lines(diff: str) -> tuple[list[str], list[str]]:
    return ([x[1:] for x in diff.splitlines() if x.startswith("-") and not x.startswith("---")],
            [x[1:] for x in diff.splitlines() if x.startswith("+") and not x.startswith("+++")])


def sql_case_only(diff: str) -> bool:
    """A mutant that only changes the letter case of SQL text: SQLite keywords and names ignore case."""
    old, new = diff_lines(diff)
    return bool(old) and len(old) == len(new) and all(
        a != b and a.lower() == b.lower() and SQL.search(a) for a, b in zip(old, new, strict=True))


def run_mutmut(command: list[str], work: Path, env: dict[str, str], cap_s: float | None) -> subprocess.CompletedProcess:
    """`mutmut run`, stopped with its workers after `cap_s` seconds: what it checked by then is scored,
    the rest reported as NOT RUN (mutmut runs the cheapest mutants first)."""
    with subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=cap_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            out, err = proc.communicate()
            print(f"mutation: stopped `mutmut run` in {work.relative_to(ROOT)} after --cap-s {cap_s:.0f}", flush=True)
            return subprocess.CompletedProcess(command, 0, out, err)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# `mutmut show` for many mutants in one process (one `mutmut show` each costs an interpreter and a config).
DIFFS = """import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
json.dump({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in json.load(sys.stdin)}, sys.stdout)"""


def all_diffs(names: list[str], work: Path, env: dict[str, str]) -> dict[str, str]:
    """Each mutant's diff, as `mutmut show` prints it."""
    run = subprocess.run([sys.executable, "-c", DIFFS], input=json.dumps(names), cwd=work, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"mutation: reading the mutants' diffs in {work.relative_to(ROOT)} failed: {run.stderr[-2000:]}")
    diffs: dict[str, str] = json.loads(run.stdout)
    return diffs


def run_module(module: str, mutmut: list[str], children: int, show: bool, report: bool = False,
               only: list[str] | None = None, cap_s: float | None = None) -> tuple[float, str]:
    """Mutate and test one module in a fresh scratch copy (`report`: only score the last run there again;
    `only`: only the mutants of these name patterns, `changed_functions`)."""
    work = SCRATCH / module if report else scratch_copy(module)
    if report and not (work / "mutants").is_dir():
        raise SystemExit(f"mutation {module}: no earlier run in {work.relative_to(ROOT)} to report")
    globs = MODULES[module][0]
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # a test skipped by mutmut's selection is no CI skip
    run = None if report else run_mutmut([*mutmut, "run", "--max-children", str(children), *(only or [])],
                                         work, env, cap_s)
    if run is not None and run.returncode != 0 and only and "nothing matches" in run.stdout + run.stderr:
        line = f"mutation {module} ({len(only)} functions): mutmut makes no mutant of them"
        return 100.0, line
    if run is not None and run.returncode != 0:
        sys.stderr.write(run.stdout[-3000:] + run.stderr[-3000:])
        raise SystemExit(f"mutation {module}: mutmut run failed (rc {run.returncode})")
    listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True,
                             check=True, env=env).stdout
    status = {name: state for name, state in re.findall(r"^\s*(\S+): (.+?)\s*$", listing, re.M)
              if not only or any(fnmatch.fnmatch(name, pattern) for pattern in only)}
    unchecked = [n for n, s in status.items() if s == "not checked"]  # an interrupted run (--report)
    for name in unchecked:
        del status[name]
    alive = [n for n, s in status.items() if s not in KILLED]

    diffs = all_diffs(alive, work, env)
    keys = {n: mutant_key(n, diffs[n]) for n in alive}
    listed = equivalents()
    accepted = {n for n in alive if keys[n] in listed or sql_case_only(diffs[n])}
    killed = sum(s in KILLED for s in status.values())
    survivors = sorted(n for n in alive if n not in accepted)
    counted = len(status) - len(accepted)
    score = 100.0 * killed / counted if counted else math.nan if unchecked else 100.0
    no_tests = sum(status[n] == "no tests" for n in survivors)
    scope = f" ({len(only)} functions)" if only else ""
    shown = "NOT MEASURED" if math.isnan(score) else f"{score:.1f}%"
    line = (f"mutation {module}{scope}: {shown} ({killed} killed of {counted}; {len(survivors) - no_tests} survived, "
            f"{no_tests} reached by no fast test, {len(accepted)} accepted equivalent"
            f"{f'; {len(unchecked)} NOT RUN (an interrupted run)' if unchecked else ''}) in {time.monotonic() - started:.0f} s")
    for name in survivors:
        print(f"--- {name}: {status[name]}\n{diffs[name].strip()}\n" if show else
              f"  {status[name]}: {keys[name][:200]}")
    prefixes = tuple(f"{g.removesuffix('*').removesuffix('.py').replace('/', '.')}" for g in globs)
    matched = set(keys.values())
    def in_scope(key: str) -> bool:  # an entry for a function this run mutated in full
        function = key.split(" || ")[0]
        return function.startswith(prefixes) and not unchecked and (
            not only or any(fnmatch.fnmatch(f"{function}__mutmut_1", pattern) for pattern in only))

    for key in listed:
        if in_scope(key) and key not in matched:
            print(f"  stale entry in {EQUIVALENT.relative_to(ROOT)} (no surviving mutant changes that line now; "
                  f"killed, or the code changed): {key[:200]}")
    return score, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", choices=[[], *MODULES], metavar="MODULE",
                        help=f"of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--changed", metavar="BASE",
                        help="only the functions of core modules changed since this git revision")
    parser.add_argument("--survivors", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument("--report", action="store_true",
                        help="score the last run in .mutation/<module>/ again without running mutmut (after listing "
                             "equivalents, or after `mutmut run NAME...` there)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--cap-s", type=float, default=None,
                        help="stop a module's mutmut run after this many seconds and score what it checked")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no further module once this many seconds have passed (said loudly)")
    args = parser.parse_args()
    modules = args.modules or list(MODULES)
    only: dict[str, list[str] | None] = {m: FUNCTIONS.get(m) for m in modules}
    if args.changed:
        only = {m: in_selection(m, changed_functions(m, args.changed)) for m in modules
                if m in changed_modules(args.changed)}
        for m in [m for m, patterns in only.items() if not patterns]:
            print(f"mutation {m}: changed since {args.changed}, but no function of it that it is scored on: "
                  "nothing to mutate")
            del only[m]
        modules = list(only)
        if not modules:
            print(f"mutation: no function of a core module changed since {args.changed}")
            return 0
    mutmut = [sys.executable, "-m", "mutmut"]
    if importlib.util.find_spec("mutmut") is None:  # (`mutmut --version` fails outside a configured tree)
        raise SystemExit("mutation: mutmut is not installed: pip install -e '.[mutation]'")
    failed = []
    lines = []
    started = time.monotonic()
    for module in modules:
        if args.budget_s is not None and time.monotonic() - started > args.budget_s:
            lines.append(f"mutation {module}: NOT RUN (--budget-s {args.budget_s:.0f} spent); "
                         f"run: python3 tools/mutation.py {module}")
            print(lines[-1], flush=True)
            continue
        score, line = run_module(module, mutmut, args.max_children, args.survivors, args.report, only[module],
                                 args.cap_s)
        lines.append(line)
        print(line, flush=True)
        if score < FLOORS[module]:
            failed.append(f"{module} {score:.1f}% < floor {FLOORS[module]}%")
    print("\n".join(["----- mutation scores -----", *lines]))
    if failed:
        print("FAILED: mutation score below its floor: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
