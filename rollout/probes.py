"""The plain-HTTP listener for the kubelet's probes and Prometheus: `/healthz`, `/readyz` and `/metrics`.

The operator API (rollout/api.py) wants TLS and bearer tokens, which neither the kubelet nor a ServiceMonitor has,
and it may be switched off; so `sluice controller` also listens here (`--metrics-address`, `--metrics-port`, 9090 by
default), without TLS or tokens. It takes no input and answers three read-only paths. The API keeps serving the same
three paths from the same handlers (`probe_routes`), so scrapes and probes pointed at it keep working.

- `/healthz` (liveness) answers from the controller's event loop: no thread, no separate process. A loop that is
  blocked (a synchronous call that never returns) cannot answer, the probe times out, and the kubelet restarts the
  pod. It does not depend on the Kubernetes API, so an API server outage restarts nothing.
- `/readyz` (readiness): the Rollout, ReplicaSet and AnalysisRun informers have listed once (`Controller.ready`), the
  same test as the API's. Leadership is not part of it: every replica serves the API and the metrics, so a standby
  replica is ready too (`sluice_leader` tells which one reconciles).
- `/metrics`: the controller's registry (rollout/metrics.py) in the Prometheus text format.

Probes and scrapes are not counted in `sluice_api_requests`: they are not operator API calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from rollout.metrics import Metrics
from rollout.settings import MetricsSettings

log = logging.getLogger(__name__)

NOT_READY = "not ready: the watches have not synced yet"


class ListenError(Exception):
    """The listener cannot bind its address (the port is taken, the address is not this host's)."""


def probe_routes(*, metrics: Metrics, ready: Callable[[], bool]) -> list[web.RouteDef]:
    """`GET /healthz`, `/readyz` and `/metrics`, for this listener and for the operator API alike."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if not ready():
            return web.json_response({"error": {"code": 503, "message": NOT_READY}}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_page(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_page)]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class ProbeServer:
    """The listener's lifecycle: `start` binds (or raises ListenError) and logs the URL, `stop` closes it."""

    def __init__(self, settings: MetricsSettings, *, metrics: Metrics, ready: Callable[[], bool]) -> None:
        self._settings = settings
        self._metrics = metrics
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(probe_routes(metrics=self._metrics, ready=self._ready))
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.address, self._settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(f"cannot listen for metrics and probes on {_host(self._settings.address)}:"
                              f"{self._settings.port}: {exc.strerror or exc} (--metrics-port 0 takes a free port)"
                              ) from exc
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("metrics listening on http://%s:%d", _host(self._settings.address), self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
