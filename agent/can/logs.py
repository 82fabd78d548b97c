"""Renamed agent.can.logformats (issue 18: one module named logs.py, agent/logs.py, the logging setup).
Kept for branches in flight this session; remove once nothing imports it."""

from agent.can.logformats import (  # noqa: F401
    LogFrame,
    LogProblem,
    format_candump,
    frame_problem,
    parse_candump_line,
    read_candump,
    read_log,
    read_python_can,
    timestamp_problem,
)
