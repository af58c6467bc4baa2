"""Fixtures for integration tests: an admin client, a fresh namespace per test, and the controller process.

The control plane itself (`control_plane`, session-scoped) lives in tests/conftest.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.kube import NAMESPACES, KubeClient
from tests.integration.kit import ControllerProcess

_counter = itertools.count()


@pytest.fixture
async def kube(control_plane: Any) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def namespace(kube: KubeClient, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{os.getpid() % 1000}-{next(_counter)}"
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    await kube.delete(NAMESPACES, name=name)


@pytest.fixture
def controller(control_plane: Any, namespace: str, tmp_path: Path) -> Iterator[ControllerProcess]:
    proc = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                             log_path=tmp_path / "controller.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop_and_show_log()
