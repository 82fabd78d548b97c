"""Dependencies point one way (issue 18: "no import runs from a lower layer back up").

    cli, bench ─► app (the runtime) ─► status (builder) ─► twin (control plane), remotedb, ota, pipeline
      ─► collect, decode, can, store, codec, uplink (the data path) ─► model, config, liveness

Every import in agent/ is read with `ast` (at the top of a module, inside a function, or under
TYPE_CHECKING: a type is a dependency too) and held to the rules below.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

AGENT = ROOT / "agent"

DATA_PATH = ("agent.can", "agent.decode", "agent.collect", "agent.store", "agent.codec", "agent.uplink")
ABOVE_DATA_PATH = ("agent.app", "agent.cli", "agent.bench", "agent.status", "agent.twin", "agent.remotedb",
                   "agent.ota", "agent.pipeline")
# (modules, what they must not import, what they may import of that nonetheless)
RULES: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    (DATA_PATH, ABOVE_DATA_PATH, ()),
    # sinks only send batches; the control plane shares their connection through hooks, not imports
    (("agent.uplink",), ("agent.twin",), ()),
    # the control plane reaches the runtime through Commands, and reads the status document's types only
    (("agent.twin",), ("agent.app", "agent.cli", "agent.bench", "agent.status"), ("agent.status.document",)),
    # the status package reads the running agent through a Protocol, not the runtime itself
    (("agent.status",), ("agent.app", "agent.cli", "agent.bench"), ()),
    # nothing but the command line and the benchmark starts the runtime
    (("agent",), ("agent.app",), ()),
    (("agent",), ("agent.cli",), ()),
]
MAY_IMPORT_APP = ("agent.app", "agent.cli", "agent.bench")
MAY_IMPORT_CLI = ("agent.cli", "agent.__main__")


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path, base: Path = ROOT) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every import in the file of `module`, relative imports made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            out.append((node.lineno, target))
            # `from agent import status` names a module too
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if target == "agent"]
    return out


def violations(root: Path = AGENT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root.parent)
        for line, target in imports(path, module):
            for importers, forbidden, allowed in RULES:
                if not _within(module, importers) or not _within(target, forbidden) or _within(target, allowed):
                    continue
                if _within(target, ("agent.app",)) and _within(module, MAY_IMPORT_APP):
                    continue
                if _within(target, ("agent.cli",)) and _within(module, MAY_IMPORT_CLI):
                    continue
                if _within(module, forbidden):  # a package importing its own modules
                    continue
                found.append(f"{path.relative_to(root.parent)}:{line}: {module} imports {target}")
                break  # one rule broken is enough to name it
    return found


def test_no_import_runs_from_a_lower_layer_back_up() -> None:
    assert violations() == []


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The check itself: an upward import of each kind, at the top, in a function or for types only, is found."""
    tree = tmp_path / "agent"
    for name, text in {
        "can/source.py": "from agent.twin.control import Control\n",
        "uplink/mqtt.py": "def f():\n    from agent.twin import guard\n",
        "store/sqlite.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.status.document import X\n",
        "collect/x.py": "import agent.app\n",
        "twin/reporter.py": "from agent.status.builder import StatusBuilder\n",
        "twin/ok.py": "from agent.status.document import StatusDocument\n",
        "decode/y.py": "from ..pipeline import build\n",
        "health.py": "from agent import app\n",
    }.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    found = violations(tree)
    assert [f.split(": ", 1)[1] for f in found] == [
        "agent.can.source imports agent.twin.control",
        "agent.collect.x imports agent.app",
        "agent.decode.y imports agent.pipeline",
        "agent.health imports agent.app",
        "agent.store.sqlite imports agent.status.document",
        "agent.twin.reporter imports agent.status.builder",
        "agent.uplink.mqtt imports agent.twin",
    ], found
