"""What the agent imports at start is what its RSS pays for on every car (issue 19: 50 MB with the
bundled car). The HTTP client and the signature library serve remote databases and software
updates only; they are imported at the first download or key load, not by every agent."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_starting_the_agent_imports_no_http_client_or_crypto_library() -> None:
    probe = ("import sys; import agent.app, agent.cli.run; "
             "print(sorted(m for m in ('requests', 'urllib3', 'cryptography', 'dbus_fast') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported at start: {out.stdout.strip()}"
