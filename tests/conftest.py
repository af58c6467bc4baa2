"""Fixtures shared by every test package. `control_plane` is the real Kubernetes control plane (devcluster) that
integration tests talk to: started once per session, because start-up costs seconds, and stopped at the end.
Tests isolate themselves by working in their own namespaces.

`prometheus` is a real Prometheus, also one per session and started only when a test asks for it;
`private_prometheus` is one for a single test, which may stop it. `start_metrics_app` starts services whose error
rate and latency a test sets, scraped under a label `app=<name>` unique to the test: tests isolate themselves by
querying only their own apps' series.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from devcluster import ControlPlane, Prometheus
from devcluster.metrics_app import DEFAULT_RPS, MetricsApp, MetricsAppFactory

_app_ids = itertools.count()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as started:
        yield started


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Shared by the session: a test that wants to stop Prometheus takes `private_prometheus` instead."""
    with Prometheus(workdir=tmp_path_factory.mktemp("prometheus")) as started:
        yield started


@pytest.fixture
def private_prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A Prometheus of this test's own (started in ~0.1 s), which it may stop and start again."""
    with Prometheus(workdir=tmp_path / "prometheus") as started:
        yield started


@pytest.fixture
def start_metrics_app(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MetricsAppFactory]:
    """`start_metrics_app(error_rate=..., latency=..., rps=..., prometheus=...)` starts an app and makes it a target
    of `prometheus` (default: the session's), labelled app=<name> (unique unless given); after the test every app is
    unregistered and stopped. Prometheus scrapes a new target up to ~10 s later (see devcluster/prometheus.py), so
    by default it returns once a rate over the app's requests can be computed (`scraped=False` does not wait)."""
    started: list[tuple[MetricsApp, Prometheus, str]] = []  # the address too: a stopped app forgets its port
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")

    def start(*, name: str | None = None, error_rate: float = 0.0, latency: float = 0.0, rps: float = DEFAULT_RPS,
              prometheus: Prometheus | None = None, scraped: bool = True) -> MetricsApp:
        # Looked up only now, so tests with a private Prometheus do not start the session's.
        target = prometheus or cast(Prometheus, request.getfixturevalue("prometheus"))
        name = name or f"{base}-{os.getpid() % 1000}-{next(_app_ids)}"
        app = MetricsApp(name=name, error_rate=error_rate, latency=latency, rps=rps,
                         log_path=tmp_path / f"{name}.log")
        app.start()
        started.append((app, target, app.address))
        target.add_target(app.address, {"app": name})
        if scraped and rps > 0:
            target.wait_for_series(f'rate(http_requests_total{{app="{name}"}}[3s]) > 0', timeout=30)
        return app

    yield start
    for app, target, address in reversed(started):
        target.remove_target(address)
        app.stop()
