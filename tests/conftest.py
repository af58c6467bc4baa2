"""Fixtures shared by every test package. `control_plane` is the real Kubernetes control plane (devcluster) that
integration tests talk to: started once per session, because start-up costs seconds, and stopped at the end.
Tests isolate themselves by working in their own namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devcluster import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as started:
        yield started
