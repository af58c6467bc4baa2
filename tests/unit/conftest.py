"""Fixtures every unit test gets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`sluice controller` (and anything calling rollout.reporting.configure_logging) puts a handler on the root logger
    that writes to this test's captured stderr; undo that, so later tests do not log to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
