"""What can be checked of the packaging without a container engine or systemd as PID 1.

The IoT Edge manifest and module metadata are valid JSON whose createOptions give the container the
host's CAN interfaces and a state volume; the unit file passes `systemd-analyze verify`; the agent
speaks systemd's notify protocol for real (READY, WATCHDOG, STOPPING over $NOTIFY_SOCKET); the
Dockerfile runs as a non-root user with state on a volume and a health check.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_edge_manifest_gives_the_module_host_can_and_a_state_volume() -> None:
    doc = json.loads((ROOT / "config" / "deployment.template.json").read_text())
    module = doc["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["vehicle-agent"]
    create = json.loads(module["settings"]["createOptions"])
    assert create["HostConfig"]["NetworkMode"] == "host", "SocketCAN interfaces live in the host's network namespace"
    assert any(b.endswith(":/var/lib/vehicle-agent") for b in create["HostConfig"]["Binds"])
    # the bind source must belong to the container's user: the manifest says so where it is read
    assert "chown 10001:10001 /var/lib/vehicle-agent" in create["Labels"]["vehicle-agent.state-volume"]
    assert module["env"]["VEHICLE_AGENT_SINK"]["value"] == "iothub"
    route = doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["vehicleAgentToIoTHub"]
    assert route == "FROM /messages/modules/vehicle-agent/outputs/telemetry INTO $upstream"
    desired = doc["modulesContent"]["vehicle-agent"]["properties.desired"]
    from agent.config import build_config, load_config_data
    from agent.twin.desired import DesiredState  # noqa: F401 - the contract the desired section must meet
    base = load_config_data(ROOT / "config" / "agent.yaml")
    build_config({**base, **desired}, base_dir=ROOT / "config")  # the module twin's desired state is a valid config


def test_module_json_points_at_the_dockerfile() -> None:
    doc = json.loads((ROOT / "modules" / "vehicle-agent" / "module.json").read_text())
    platforms = doc["image"]["tag"]["platforms"]
    assert {"amd64", "arm64v8"} <= set(platforms)
    for dockerfile in platforms.values():
        assert (ROOT / "modules" / "vehicle-agent" / dockerfile).resolve() == ROOT / "Dockerfile"


def test_license_is_the_one_pyproject_names() -> None:
    import tomllib

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_dockerfile_is_small_non_root_with_state_volume_and_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "USER agent" in text and "VOLUME [\"/var/lib/vehicle-agent\"]" in text
    assert "HEALTHCHECK" in text and "status\", \"--check" in text
    copied = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    assert all((ROOT / c).exists() for c in copied), copied


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_file_does_not_restart_a_deployment_error_and_is_hardened() -> None:
    text = (ROOT / "systemd" / "vehicle-agent.service").read_text()
    unit = _unit_settings(text)
    assert unit["Restart"] == ["always"] and unit["RestartPreventExitStatus"] == ["2"]
    (pre,) = unit["ExecStartPre"]
    assert pre.endswith("vehicle-agent check-config /etc/vehicle-agent/agent.yaml")
    assert unit["ExecStart"][0].split()[0] == pre.lstrip("-").split()[0]  # the same installed command
    # Documentation= names a file an install step of docs/deployment.md creates
    (doc,) = unit["Documentation"]
    assert doc.startswith("file://")
    assert f"docs/deployment.md {doc.removeprefix('file://')}" in (ROOT / "docs" / "deployment.md").read_text()
    # an ordering after a device is only meaningful with a dependency on it
    devices = [u for v in unit.get("After", []) for u in v.split() if u.endswith(".device")]
    pulled = {u for key in ("Wants", "Requires", "BindsTo") for v in unit.get(key, []) for u in v.split()}
    assert set(devices) <= pulled
    assert unit["ProtectProc"] == ["invisible"] and unit["ProcSubset"] == ["pid"] and unit["UMask"] == ["0077"]
    assert "~@privileged @resources" in unit["SystemCallFilter"] and unit["IPAddressDeny"]


def test_unit_file_verifies() -> None:
    unit = ROOT / "systemd" / "vehicle-agent.service"
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=always" in text
    assert "StateDirectory=vehicle-agent" in text and "NoNewPrivileges=yes" in text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60)
    # The ExecStart binary only exists once installed; everything else must verify cleanly.
    problems = [line for line in res.stderr.splitlines()
                if line.strip() and "/opt/vehicle-agent/venv/bin/vehicle-agent" not in line
                and "Failed to prepare filename" not in line and "Unit vehicle-agent.service has a bad unit file setting" not in line]
    assert not problems, res.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                              text=True, timeout=60)
    if "--offline" in security.stderr:  # systemd before 250 has no offline analysis
        return
    failing = {line.split()[1] for line in security.stdout.splitlines() if line.startswith("✗")}
    assert not failing & {"ProtectProc=", "ProcSubset=", "UMask=", "SystemCallFilter=~@privileged",
                          "SystemCallFilter=~@resources", "PrivateMounts="}, security.stdout
    exposure = float(security.stdout.split("Overall exposure level for vehicle-agent.service:")[1].split()[0])
    assert exposure <= 1.5, security.stdout  # 2.1 before these items


def test_agent_speaks_the_systemd_notify_protocol(tmp_path: Path) -> None:
    """A real notify socket, as systemd would give it: READY=1 once running, WATCHDOG=1 pings, STOPPING=1."""
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.5)
    cfg = {"vehicle_id": "unit", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "pt", "interface": "virtual", "channel": "notify-test", "simulate": True,
                      "databases": [str(ROOT / "config" / "dbc" / "powertrain.dbc")]}],
           "sink": {"type": "file", "path": "outbox"}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path), "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in got) < 2:
            try:
                got.append(server.recv(4096).decode())
            except TimeoutError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        proc.terminate()
        proc.wait(30)
        while True:
            try:
                got.append(server.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert got and got[0].startswith("READY=1") and "STATUS=collecting from 1 bus(es)" in got[0]
    assert sum("WATCHDOG=1" in m for m in got) >= 2
    assert any(m.startswith("STOPPING=1") for m in got)
    assert proc.returncode == 0


def _lock() -> dict[str, tuple[str, list[str], str]]:
    """requirements.lock as name -> (version, hashes, its `# via` note)."""
    from packaging.utils import canonicalize_name

    entries: dict[str, tuple[str, list[str], str]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and "==" in line:
            name, version = line.split(" ")[0].split("==")
            name = canonicalize_name(name)
            entries[name] = (version, [], "")
        elif stripped.startswith("--hash=sha256:") and name:
            entries[name][1].append(stripped.split(":", 1)[1].rstrip(" \\"))
        elif stripped.startswith("#") and name:
            version, hashes, via = entries[name]
            entries[name] = (version, hashes, via + stripped)
    return entries


def test_lock_file_pins_every_dependency_of_pyproject_with_hashes() -> None:
    """Offline: the lock pins exactly pyproject's runtime dependencies (by name, within their
    specifiers) plus what they pull in, each with sha256 hashes; the Dockerfile installs from it.
    Regenerate with the command in the lock's header after changing pyproject.toml's dependencies."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    lock = _lock()
    missing = set(direct) - set(lock)
    assert not missing, f"requirements.lock lacks {sorted(missing)}: run pip-compile (see its header)"
    for name, req in direct.items():
        assert req.specifier.contains(lock[name][0], prereleases=True), \
            f"{name}=={lock[name][0]} in requirements.lock is outside pyproject's {req}"
    named_by_pyproject = {n for n, (_, _, via) in lock.items() if "vehicle-agent (pyproject.toml)" in via}
    assert named_by_pyproject == set(direct), "requirements.lock was compiled from other dependencies"
    for name, (_, hashes, _) in lock.items():
        assert hashes and all(len(h) == 64 for h in hashes), f"{name} has no sha256 hash"
    docker = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in docker and "-r requirements.lock" in docker and "--no-index" in docker


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_every_module_the_tests_import_is_declared() -> None:
    """A fresh `pip install -e '.[test]'` runs the suite: nothing it imports is there by chance."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    imported: dict[str, str] = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                imported.setdefault(name.split(".")[0], path.name)
    third_party = {m: f for m, f in imported.items()
                   if m not in sys.stdlib_module_names and m not in ("agent", "tests", "__future__")}
    assert {"pytest", "jsonschema", "yaml", "can"} <= set(third_party), "the scan sees the tests' imports"
    distributions = importlib.metadata.packages_distributions()
    undeclared = {m: (f, distributions.get(m)) for m, f in third_party.items()
                  if not {d.lower().replace("_", "-") for d in distributions.get(m, [])} & declared}
    assert not undeclared, f"imported by tests but not declared in pyproject.toml (module: (file, distribution)): {undeclared}"
