"""A real Kubernetes control plane on loopback, for sluice's integration tests and its demo, and a real Prometheus
next to it for the analysis tests.

`ControlPlane` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes) built by
`hack/build-control-plane.sh`, with sluice's CRDs and the routers' upstream CRDs (Istio, Gateway API, SMI)
installed. Tests get it from the `control_plane` fixture in tests/conftest.py; people get it from
`python -m devcluster up`. `Prometheus` runs the real `prometheus`
binary (`hack/install-prometheus.sh`) scraping targets added at run time, usually `devcluster.metrics_app.MetricsApp`
services whose error rate and latency a test sets (not exported here: that module also runs as `python -m`).
Not part of the shipped controller.
"""

from devcluster.controlplane import ApiClient, ApiError, ControlPlane, ControlPlaneError
from devcluster.prometheus import Prometheus, PrometheusError

__all__ = ["ApiClient", "ApiError", "ControlPlane", "ControlPlaneError", "Prometheus", "PrometheusError"]
