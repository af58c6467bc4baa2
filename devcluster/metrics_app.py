"""A small real HTTP service whose error rate and latency a test controls: what the analysis tests measure with a
real Prometheus (devcluster/prometheus.py) to see sluice promote a good canary and abort a bad one.

`python -m devcluster.metrics_app --port 0` serves, on loopback:

- `GET /`: the "application": sleeps `latency` seconds, answers 500 with probability `error_rate`, else 200; counted
  in `http_requests_total{code}` and timed in `http_request_duration_seconds` (a histogram).
- `GET /metrics`: the Prometheus exposition of those (prometheus-client).
- `GET /health`: `{"ok": true, "error_rate": ..., "latency": ..., "rps": ...}` (also a target for web checks).
- `POST /control` with any of `{"error_rate": 0..1, "latency": seconds, "rps": requests/s}`: changes the settings and
  answers them; a bad body gets 400 and `{"error": ...}`.

It loads itself: a loop sends `rps` real requests a second to its own `/`, so the counters move without the test
generating traffic. It prints its port on stdout's first line and stops cleanly on SIGTERM or SIGINT.

`MetricsApp` runs it as a subprocess for tests; the `start_metrics_app` fixture in tests/conftest.py also registers it
as a Prometheus target labelled `app=<name>`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import math
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram

from devcluster.controlplane import Component, spawn
from devcluster.prometheus import Prometheus

# Down to 5 ms so a healthy loopback service is distinguishable from a slow one; up to 10 s for injected latency.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
LIMITS = {"error_rate": (0.0, 1.0), "latency": (0.0, 60.0), "rps": (0.0, 1000.0)}
MAX_IN_FLIGHT = 500  # self-load requests at once; beyond that a tick is skipped rather than queued
DEFAULT_RPS = 20.0

Json = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    error_rate: float = 0.0
    latency: float = 0.0
    rps: float = DEFAULT_RPS

    def updated(self, changes: object) -> Settings:
        """These settings with `changes` (a JSON object, any subset of the fields) applied; ValueError if invalid."""
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object")
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(LIMITS)}")
        for key, value in changes.items():
            low, high = LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{key} must be a number, not {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{key} must be between {low:g} and {high:g}, not {value!r}")
        return replace(self, **{key: float(value) for key, value in changes.items()})


# -- the service (runs in the subprocess) -----------------------------------------------------------------------------


class _Service:
    """What the request handlers and the load loop share: settings (swapped whole under a lock) and the metrics."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self.stopping = threading.Event()
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "Requests to / by status code.", ["code"], registry=self.registry)
        for code in ("200", "500"):  # both series exist from the start, so error ratios are 0 rather than empty
            self.requests.labels(code=code)
        self.duration = Histogram("http_request_duration_seconds", "Time to answer a request to /.",
                                  buckets=BUCKETS, registry=self.registry)

    @property
    def settings(self) -> Settings:
        with self._lock:
            return self._settings

    def update(self, changes: object) -> Settings:
        with self._lock:
            self._settings = self._settings.updated(changes)
            return self._settings


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler sleeping `latency` must not hold up shutdown

    def __init__(self, address: tuple[str, int], service: _Service) -> None:
        super().__init__(address, _Handler)
        self.service = service


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/":
            self._serve_app()
        elif path == "/metrics":
            self._send(200, prometheus_client.generate_latest(self.server.service.registry), CONTENT_TYPE_LATEST)
        elif path == "/health":
            self._send_json(200, {"ok": True, **asdict(self.server.service.settings)})
        else:
            self._send_json(404, {"error": f"no such path {path}"})

    def do_POST(self) -> None:
        if self.path.partition("?")[0] != "/control":
            self._send_json(404, {"error": f"no such path {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError as error:
            self._send_json(400, {"error": f"the body is not JSON: {error}"})
            return
        try:
            settings = self.server.service.update(body)
        except ValueError as error:
            self._send_json(400, {"error": str(error)})
            return
        log.info("settings now %s", settings)
        self._send_json(200, asdict(settings))

    def _serve_app(self) -> None:
        started = time.perf_counter()
        settings = self.server.service.settings
        if settings.latency > 0:
            time.sleep(settings.latency)
        code = 500 if random.random() < settings.error_rate else 200
        self._send_json(code, {"ok": code == 200})
        self.server.service.requests.labels(code=str(code)).inc()
        self.server.service.duration.observe(time.perf_counter() - started)

    def _send_json(self, status: int, body: object) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request (20+ a second) would bury the settings changes in the log


def _generate_load(service: _Service, port: int) -> None:
    """Send `rps` requests a second to our own `/`, each on its own thread so slow answers do not lower the rate."""
    in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
    last = time.monotonic()
    while not service.stopping.is_set():
        rps = service.settings.rps
        now = time.monotonic()
        if rps <= 0:
            last = now
            service.stopping.wait(0.05)
            continue
        due = last + 1.0 / rps
        if now < due:
            service.stopping.wait(min(due - now, 0.05))  # short slices: a new rps takes effect at once
            continue
        last = max(due, now - 1.0)  # after a stall, catch up at most a second's worth
        if in_flight.acquire(blocking=False):
            threading.Thread(target=_request_self, args=(port, in_flight), daemon=True).start()


def _request_self(port: int, in_flight: threading.BoundedSemaphore) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=max(LIMITS["latency"]) + 10)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
    except OSError:
        pass  # shutting down; the server side counts what it answered
    finally:
        connection.close()
        in_flight.release()


def serve(*, host: str, port: int, settings: Settings) -> int:
    # Signals are blocked before any thread starts (threads inherit the mask) and taken with sigwait below, so
    # shutdown always runs here in the main thread, never inside a handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    service = _Service(settings)
    server = _Server((host, port), service)
    bound = int(server.server_address[1])
    print(bound, flush=True)
    threads = [threading.Thread(target=server.serve_forever, args=(0.1,), name="http", daemon=True),
               threading.Thread(target=_generate_load, args=(service, bound), name="load", daemon=True)]
    for thread in threads:
        thread.start()
    log.info("serving on %s:%d with %s", host, bound, settings)
    received = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    log.info("stopping on %s", signal.Signals(received).name)
    service.stopping.set()
    server.shutdown()
    server.server_close()
    for thread in threads:
        thread.join(timeout=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.metrics_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds")
    parser.add_argument("--rps", type=float, default=DEFAULT_RPS, help="self-load, requests per second")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [metrics-app] %(message)s", stream=sys.stderr)
    try:
        settings = Settings().updated({"error_rate": args.error_rate, "latency": args.latency, "rps": args.rps})
    except ValueError as error:
        parser.error(str(error))
    return serve(host=args.host, port=args.port, settings=settings)


# -- the harness (runs in the tests) ----------------------------------------------------------------------------------


class MetricsAppError(RuntimeError):
    """The metrics app could not be started or refused a request; the message carries the evidence."""


class MetricsApp:
    """`python -m devcluster.metrics_app` as a subprocess on a free loopback port. Use as a context manager, or call
    start() and stop(). Its log goes to `log_path` (by default a temp dir that stop() deletes)."""

    def __init__(self, *, name: str = "metrics-app", error_rate: float = 0.0, latency: float = 0.0,
                 rps: float = DEFAULT_RPS, log_path: Path | None = None, startup_timeout: float = 15.0) -> None:
        self.name = name
        self._initial = Settings().updated({"error_rate": error_rate, "latency": latency, "rps": rps})
        self._given_log_path = log_path
        self._tempdir: Path | None = None
        self._timeout = startup_timeout
        self._component: Component | None = None
        self._port: int | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies

    @property
    def port(self) -> int:
        if self._port is None:
            raise MetricsAppError(f"metrics app {self.name} is not running")
        return self._port

    @property
    def address(self) -> str:
        """The "127.0.0.1:<port>" form Prometheus targets take."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def log_path(self) -> Path:
        if self._given_log_path is not None:
            return self._given_log_path
        if self._tempdir is None:
            self._tempdir = Path(tempfile.mkdtemp(prefix="sluice-metrics-app-"))
        return self._tempdir / f"{self.name}.log"

    def start(self) -> None:
        if self._component is not None:
            raise MetricsAppError(f"metrics app {self.name} is already started")
        s = self._initial
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._component = spawn(self.name, [
            sys.executable, "-m", "devcluster.metrics_app", "--port=0", f"--error-rate={s.error_rate!r}",
            f"--latency={s.latency!r}", f"--rps={s.rps!r}",
        ], log_path=self.log_path, cwd=self.log_path.parent, stdout=subprocess.PIPE)
        try:
            self._port = self._read_port(self._component)
            self._wait_healthy(self._component)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (then SIGKILL); idempotent."""
        if self._component is not None:
            self._component.stop(grace=5.0)
            if self._component.process.stdout is not None:
                self._component.process.stdout.close()
            self._component = None
        self._port = None
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def set(self, *, error_rate: float | None = None, latency: float | None = None,
            rps: float | None = None) -> Json:
        """Change the given settings at once; returns all of them as the app now has them."""
        changes = {key: value for key, value in
                   (("error_rate", error_rate), ("latency", latency), ("rps", rps)) if value is not None}
        return self.control(changes)

    def control(self, body: object) -> Json:
        """POST `body` as JSON to /control; MetricsAppError (with the app's message) unless it answers 200."""
        request = urllib.request.Request(f"{self.url}/control", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=10) as response:
                answer: Json = json.load(response)
                return answer
        except urllib.error.HTTPError as error:
            raise MetricsAppError(f"{self.name} refused {body!r}: HTTP {error.code}: "
                                  f"{error.read().decode(errors='replace')}") from error

    def health(self) -> Json:
        with self._opener.open(f"{self.url}/health", timeout=10) as response:
            answer: Json = json.load(response)
            return answer

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _read_port(self, component: Component) -> int:
        stdout = component.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            ready = selector.select(self._timeout)
        line = stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.isdigit():
            raise MetricsAppError(f"{self.name} printed no port within {self._timeout:g}s (got {line!r}); "
                                  f"the end of its log:\n{component.tail()}")
        return int(line)

    def _wait_healthy(self, component: Component) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            code = component.process.poll()
            if code is not None:
                raise MetricsAppError(f"{self.name} exited with code {code}; the end of its log:\n{component.tail()}")
            with contextlib.suppress(OSError):
                if self.health().get("ok"):
                    return
            if time.monotonic() > deadline:
                raise MetricsAppError(f"{self.name} not healthy after {self._timeout:g}s; the end of its log:\n"
                                      f"{component.tail()}")
            time.sleep(0.05)


class MetricsAppFactory(Protocol):
    """The `start_metrics_app` fixture: start an app scraped with the label app=<its name> by `prometheus` (by default
    the session's one)."""

    def __call__(self, *, name: str | None = None, error_rate: float = 0.0, latency: float = 0.0,
                 rps: float = DEFAULT_RPS, prometheus: Prometheus | None = None,
                 scraped: bool = True) -> MetricsApp: ...


if __name__ == "__main__":
    sys.exit(main())
