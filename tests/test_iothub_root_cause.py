"""An IoT Hub connection that fails says why (issue 14, item 8): DNS, TCP, TLS or authentication, in the
log and in status, where the SDK itself only says "Could not connect to IoTHub"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, ROOT
from tests.iothub_standin import make_certs

pytestmark = pytest.mark.iothub


def _link_error(tmp_path: Path, host: str) -> tuple[str, list[dict]]:
    """Run the agent toward `host` until its status shows a failed connection; (link error, log events)."""
    state = tmp_path / "state"
    cfg = {"vehicle_id": "car-1", "state_dir": str(state),
           "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(DATA / "edge.log"),
                      "replay_rate": 0.01}],  # a slow replay keeps the agent running
           "sink": {"type": "iothub", "retry_initial_s": 0.2, "retry_max_s": 1.0,
                    "iothub": {"connect_timeout_s": 10}}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json",
           "VEHICLE_AGENT_IOTHUB_CONNECTION_STRING": f"HostName={host};DeviceId=car-1;SharedAccessKey=c2VjcmV0LWtleQ=="}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path), "--no-progress"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    error = None
    try:
        deadline = time.monotonic() + 90
        while error is None:
            assert time.monotonic() < deadline and proc.poll() is None, "no failed connection shown in status"
            time.sleep(0.2)
            try:
                error = json.loads((state / "status.json").read_text())["sink"].get("link_error")
            except (OSError, ValueError, KeyError):
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert "c2VjcmV0LWtleQ" not in err
    return error, [json.loads(x) for x in err.splitlines() if x.startswith("{")]


@pytest.mark.parametrize(("host", "expected"), [
    ("no-such-hub.invalid", "DNS: gaierror: "),
    ("127.0.0.2", "TCP: ConnectionRefusedError: [Errno 111] Connection refused"),  # nothing listens there
])
def test_dns_and_tcp_failures_are_named(tmp_path: Path, host: str, expected: str) -> None:
    error, events = _link_error(tmp_path, host)
    assert error.startswith(expected), error
    failed = [e for e in events if e["event"] == "sink_failed"]
    assert failed and expected in failed[0]["error"]


def test_a_server_certificate_nobody_trusts_is_a_tls_failure(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")  # a CA this agent does not trust
    server = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.3:8883", "-cert", str(certs["cert"]),
                               "-key", str(certs["key"]), "-quiet"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        error, _ = _link_error(tmp_path, "127.0.0.3")
    finally:
        server.kill()
        server.wait()
    assert error.startswith("TLS: SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED]"), error
