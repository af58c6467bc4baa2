"""A real Kubernetes control plane on loopback, for sluice's integration tests and its demo.

`ControlPlane` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes) built by
`hack/build-control-plane.sh`, with sluice's and Istio's CRDs installed. Tests get it from the `control_plane`
fixture in tests/conftest.py; people get it from `python -m devcluster up`. Not part of the shipped controller.
"""

from devcluster.controlplane import ApiClient, ApiError, ControlPlane, ControlPlaneError

__all__ = ["ApiClient", "ApiError", "ControlPlane", "ControlPlaneError"]
