"""The Prometheus harness the analysis tests stand on: a real Prometheus scraping real services whose error rate and
latency the test sets. These tests show that what a test sets is what PromQL reports, within seconds, and that
Prometheus can be taken away and brought back the way the analysis tests need.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest

from devcluster import Prometheus
from devcluster.metrics_app import MetricsApp, MetricsAppError, MetricsAppFactory


def success_ratio(app: str) -> str:
    return (f'sum(rate(http_requests_total{{app="{app}",code!~"5.."}}[5s]))'
            f' / sum(rate(http_requests_total{{app="{app}"}}[5s]))')


def p99_latency(app: str) -> str:
    return f'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{app="{app}"}}[5s])))'


def wait_for_value(prometheus: Prometheus, expr: str, accept: Callable[[float], bool], *, what: str,
                   timeout: float = 20.0) -> float:
    """Poll an instant query with one series until its value is accepted; fail with the last value after `timeout`."""
    started = time.monotonic()
    last: float | None = None
    while time.monotonic() - started < timeout:
        result = prometheus.query(expr)
        if result:
            last = float(result[0]["value"][1])
            if accept(last):
                print(f"{what}: {last:.3f} after {time.monotonic() - started:.1f}s")
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r} of {expr}")


def test_success_ratio_follows_the_error_rate_set_on_the_app(prometheus: Prometheus,
                                                             start_metrics_app: MetricsAppFactory) -> None:
    app = start_metrics_app(error_rate=0.0)
    wait_for_value(prometheus, success_ratio(app.name), lambda ratio: ratio == 1.0, what="all requests succeed")

    app.set(error_rate=0.5)

    wait_for_value(prometheus, success_ratio(app.name), lambda ratio: 0.4 <= ratio <= 0.6,
                   what="half the requests succeed", timeout=15)


def test_app_loads_itself_at_the_requested_rate(prometheus: Prometheus, start_metrics_app: MetricsAppFactory) -> None:
    app = start_metrics_app(rps=40)

    wait_for_value(prometheus, f'sum(rate(http_requests_total{{app="{app.name}"}}[5s]))',
                   lambda rps: 36 <= rps <= 44, what="about 40 requests a second")


def test_latency_set_on_the_app_shows_in_the_p99(prometheus: Prometheus, start_metrics_app: MetricsAppFactory) -> None:
    app = start_metrics_app(latency=0.0)
    wait_for_value(prometheus, p99_latency(app.name), lambda p99: p99 < 0.025, what="p99 below 25 ms")

    app.set(latency=0.12)

    # 120 ms falls in the (0.1, 0.15] bucket, and histogram_quantile interpolates there; on a loaded machine more
    # than 1% of sleeps may overshoot into the next buckets (up to 0.3), which still says "about 120 ms, not 0".
    wait_for_value(prometheus, p99_latency(app.name), lambda p99: 0.1 < p99 <= 0.3, what="p99 near 120 ms",
                   timeout=15)


def test_stopped_prometheus_refuses_connections_and_starts_again_on_the_same_url(
        private_prometheus: Prometheus, start_metrics_app: MetricsAppFactory) -> None:
    prometheus = private_prometheus
    app = start_metrics_app(prometheus=prometheus)
    prometheus.wait_for_series(f'up{{app="{app.name}"}} == 1', timeout=20)
    url = prometheus.url

    prometheus.stop()

    with pytest.raises(urllib.error.URLError) as refused:
        prometheus.query("up")
    assert isinstance(refused.value.reason, ConnectionRefusedError)

    restarted_at = time.time()
    prometheus.start()

    assert prometheus.url == url
    assert prometheus.query(f'up{{app="{app.name}"}}'), "the data from before the restart is gone"
    prometheus.wait_for_series(f'timestamp(up{{app="{app.name}"}}) > {restarted_at}', timeout=20)


def test_app_refuses_invalid_settings_and_keeps_its_own(tmp_path: Path) -> None:
    with MetricsApp(log_path=tmp_path / "app.log", rps=0) as app:
        assert app.set(error_rate=0.25) == {"error_rate": 0.25, "latency": 0.0, "rps": 0.0}

        for body in ({"error_rate": 2}, {"latency": "slow"}, {"rps": -1}, {"colour": "red"}, [0.5]):
            with pytest.raises(MetricsAppError, match="HTTP 400"):
                app.control(body)

        assert app.health() == {"ok": True, "error_rate": 0.25, "latency": 0.0, "rps": 0.0}
