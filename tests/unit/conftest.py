"""Fixtures every unit test gets."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig with usable credentials for a server where nothing listens (nothing is asked of it)."""
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "alice"}}],
        "users": [{"name": "alice", "user": {"token": "t"}}],
    }))
    return path
