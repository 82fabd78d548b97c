"""`python -m agent` is the same as the `vehicle-agent` command."""

from agent.cli import main

raise SystemExit(main())
