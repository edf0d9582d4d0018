"""Measured figures shown in the test output, also without ``-s`` (one home for the four suites
that report them: docker, kubernetes, service, load)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest


def reporter(tag: str) -> Callable[[pytest.FixtureRequest | pytest.Config, str], None]:
    """``report(request_or_config, line)`` writing ``[tag] line`` past pytest's capture."""

    def report(where: pytest.FixtureRequest | pytest.Config, line: str) -> None:
        config = getattr(where, "config", where)
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if terminal is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            terminal.write_line(f"[{tag}] {line}")

    return report
