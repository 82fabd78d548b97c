"""`vehicle-agent schema`: the JSON Schema of the config, the twin's desired-properties contract."""

from __future__ import annotations

import argparse

import orjson

from agent.cli.common import EXIT_OK, out
from agent.config import json_schema

HELP = "print the JSON Schema of the config (the twin's desired-properties contract)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    out(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2))
    return EXIT_OK
