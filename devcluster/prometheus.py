"""A real Prometheus on loopback, for the analysis tests and the demo: the server sluice's Prometheus provider queries.

Why the real binary rather than a fake API: the analysis conditions are PromQL over scraped counters and
histograms, and only the real server shows how `rate()` windows, staleness, scrape failures and an unreachable
server behave. `hack/install-prometheus.sh` installs it (Debian's `prometheus` package) unless
`SLUICE_PROMETHEUS_BIN` names a binary to use instead.

`Prometheus` runs it on a free loopback port with its own config, data and log in a workdir. It scrapes and
evaluates every second, and takes its targets from a file_sd JSON file that `add_target` and `remove_target` rewrite,
so tests register at run time the services they start (usually `devcluster.metrics_app`, through the fixtures in
tests/conftest.py); Prometheus itself is always one of those targets (label app="prometheus"), so `up{job=...}` is
never empty. Prometheus still batches target changes: a new target is scraped up to ~10 s after it is added
(discovery sends updates every 5 s and the scrape manager reloads every 5 s; neither goes lower). Tests can stop it
and start it again on the same port, with its data, to see how sluice copes with Prometheus going away.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devcluster.controlplane import REPO_ROOT, Component, free_ports, spawn

PROMETHEUS_BIN_ENV = "SLUICE_PROMETHEUS_BIN"
INSTALL_SCRIPT = REPO_ROOT / "hack" / "install-prometheus.sh"
SCRAPE_JOB = "sluice-test-targets"
SELF_LABELS = {"app": "prometheus"}
INTERVAL = "1s"  # scrape, evaluation and file_sd refresh: short, so tests wait seconds rather than minutes

Json = dict[str, Any]
log = logging.getLogger(__name__)


class PrometheusError(RuntimeError):
    """Prometheus could not be found, started or queried; the message carries the evidence."""


def prometheus_binary() -> str:
    """`$SLUICE_PROMETHEUS_BIN`, else `prometheus` from PATH."""
    configured = os.environ.get(PROMETHEUS_BIN_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            raise PrometheusError(f"{PROMETHEUS_BIN_ENV}={configured} is not an executable file")
        return configured
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusError(f"prometheus is not on PATH: run {INSTALL_SCRIPT} or set {PROMETHEUS_BIN_ENV}")
    return found


class Prometheus:
    """The `prometheus` binary on 127.0.0.1:<port>, scraping the targets added with add_target().

    Use as a context manager, or call start() and close(). stop() and start() may alternate: the port, the targets
    and the data survive, so `url` stays the same. A workdir passed in is kept (for its log); one made here is
    deleted by close().
    """

    def __init__(self, *, workdir: Path | None = None, startup_timeout: float = 30.0) -> None:
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._port: int | None = None
        self._targets: dict[str, dict[str, str]] = {}
        self._component: Component | None = None
        self._timeout = startup_timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies

    # -- public surface -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._port is None:
            raise PrometheusError("Prometheus was never started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = self._prepare_workdir()
        return self._workdir

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def targets_path(self) -> Path:
        return self.workdir / "targets.json"

    @property
    def job(self) -> str:
        """The `job` label of every scraped series."""
        return SCRAPE_JOB

    @property
    def running(self) -> bool:
        return self._component is not None and self._component.process.poll() is None

    def add_target(self, address: str, labels: Mapping[str, str] | None = None) -> None:
        """Scrape `address` ("host:port", path /metrics) with `labels` on every series; replaces earlier labels."""
        self._targets[address] = dict(labels or {})
        self._write_targets()

    def remove_target(self, address: str) -> None:
        """Stop scraping `address` (its series go stale at the next reload); unknown addresses are ignored."""
        if self._targets.pop(address, None) is not None:
            self._write_targets()

    def start(self) -> None:
        """Start Prometheus (on the port of the previous start, if any) and wait until /-/ready answers."""
        if self.running:
            raise PrometheusError(f"Prometheus is already running at {self.url}")
        binary = prometheus_binary()
        workdir = self.workdir
        if self._port is None:
            self._port = free_ports(1)[0]
            self._write_targets()  # now with itself
            atexit.register(self.close)  # last resort; close() unregisters it
        started = time.monotonic()
        self._component = spawn("prometheus", [
            binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self._port}", "--web.enable-lifecycle",
        ], log_path=self.log_path, cwd=workdir)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("prometheus ready at %s in %.1fs (workdir %s)", self.url, time.monotonic() - started, workdir)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); keep port, targets and data for a later start(). Idempotent."""
        if self._component is not None:
            self._component.stop(grace=10.0)
            self._component = None

    def close(self) -> None:
        """stop(), and delete the workdir if this object made it. Idempotent."""
        atexit.unregister(self.close)
        self.stop()
        if self._workdir is not None and self._given_workdir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._port = None

    def query(self, expr: str) -> list[Json]:
        """An instant query; returns `data.result`. A refused connection raises URLError (an OSError); a query
        Prometheus rejects raises PrometheusError."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with self._opener.open(url, timeout=10) as response:
                body: Json = json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise PrometheusError(f"query {expr!r}: HTTP {error.code}: {detail[:1000]}") from error
        result: list[Json] = body["data"]["result"]
        return result

    def wait_for_series(self, expr: str, timeout: float = 30.0) -> list[Json]:
        """Poll the instant query until it returns something; return that. Raises TimeoutError naming `expr`."""
        deadline = time.monotonic() + timeout
        problem = "it returned nothing"
        while True:
            try:
                result = self.query(expr)
                if result:
                    return result
            except OSError as error:  # not answering (yet, or stopped by the test)
                problem = f"the last attempt failed: {error}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"no series for {expr!r} after {timeout:g}s; {problem}")
            time.sleep(0.2)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------------

    def _prepare_workdir(self) -> Path:
        workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="sluice-prometheus-"))
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
            "scrape_configs": [{
                "job_name": SCRAPE_JOB,
                "file_sd_configs": [{"files": [str(workdir / "targets.json")], "refresh_interval": INTERVAL}],
            }],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        self._write_targets(workdir / "targets.json")
        return workdir

    def _write_targets(self, path: Path | None = None) -> None:
        # Written aside and renamed: Prometheus watches the file and must never read half of it.
        path = path or self.targets_path
        targets = sorted(self._targets.items())
        if self._port is not None:
            targets.insert(0, (f"127.0.0.1:{self._port}", SELF_LABELS))
        groups = [{"targets": [address], "labels": labels} for address, labels in targets]
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps(groups, indent=2) + "\n")
        partial.replace(path)

    def _wait_ready(self) -> None:
        assert self._component is not None
        deadline = time.monotonic() + self._timeout
        while True:
            code = self._component.process.poll()
            if code is not None:
                raise PrometheusError(f"prometheus exited with code {code}; the end of its log:\n"
                                      f"{self._component.tail()}")
            try:
                with self._opener.open(f"{self.url}/-/ready", timeout=5) as response:
                    if int(response.status) == 200:
                        return
            except OSError:
                pass  # not listening yet, or still replaying its WAL (503)
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {self._timeout:g}s; the end of its log:\n"
                                      f"{self._component.tail()}")
            time.sleep(0.1)
