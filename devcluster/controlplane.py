"""A real, local Kubernetes control plane for integration tests and the demo: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods become Running and Ready).

Why real binaries rather than a fake API: sluice's value is in how it drives ReplicaSets, Services, CRDs and RBAC,
and only the real API server (admission, server-side apply, watch semantics, garbage collection) and the real
controllers (ReplicaSet, scheduler, namespace deletion) show whether it does so correctly. kwok stands in for the
kubelets, so the whole thing runs on a laptop or CI worker without containers or root.

`hack/build-control-plane.sh` builds the pinned binaries into a cache (or points at `SLUICE_K8S_BIN_DIR`); this
module runs them on free loopback ports in a fresh temp dir, creates the fake nodes and installs the CRDs
(`charts/sluice/crds/`, and the upstream CRDs of the traffic routers from their pinned Go modules: Istio's
VirtualService and DestinationRule from `istio.io/api`, Gateway API's standard channel from `sigs.k8s.io/gateway-api`,
SMI's TrafficSplit from `smi-sdk-go`, converted from the apiextensions v1beta1 it was written in). `certs` makes the
PKI. Talking to the API server uses stdlib `urllib` with a client certificate: there is no kubectl here.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import functools
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import yaml

from devcluster.certs import CertificateAuthority, KeyPair, service_account_keypair

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"
CHART_CRDS = REPO_ROOT / "charts" / "sluice" / "crds"
ISTIO_API_MODULE = "istio.io/api@v1.32.0"  # keep in step with ISTIO_API_VERSION in hack/build-control-plane.sh
ISTIO_CRD_FILE = "kubernetes/customresourcedefinitions.gen.yaml"
ISTIO_KINDS = frozenset({"VirtualService", "DestinationRule"})
# Keep these in step with GATEWAY_API_VERSION and SMI_SDK_VERSION in hack/build-control-plane.sh.
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api@v1.6.3"
GATEWAY_API_CRD_DIR = "config/crd/standard"
GATEWAY_API_KINDS = frozenset({"HTTPRoute", "Gateway", "GatewayClass", "ReferenceGrant"})
SMI_SDK_MODULE = "github.com/servicemeshinterface/smi-sdk-go@v0.5.0"  # the only version the Go proxy serves
SMI_CRD_FILE = "crds/split.yaml"
SMI_KINDS = frozenset({"TrafficSplit"})
KWOK_MODULE = "sigs.k8s.io/kwok@v0.8.0"  # keep in step with KWOK_VERSION in hack/build-control-plane.sh
# Stand-alone kwok simulates nothing without Stages; these are the ones kwokctl configures by default (nodes become
# Ready and keep their Lease fresh; pods become Running+Ready, complete, and are deleted without a kubelet).
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
FIELD_MANAGER = "sluice-devcluster"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
POD_CIDR = "10.244.0.0/16"
NODE_IP = "10.1.0.1"
NODE_ALLOCATABLE = {"cpu": "32", "memory": "256Gi", "pods": "110"}

Json = dict[str, Any]
# libyaml parses Istio's ~870 KB CRD file in 0.1 s; the pure-Python loader takes 2 s.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
log = logging.getLogger(__name__)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or configured; the message carries the evidence."""


class ApiError(ControlPlaneError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")
        self.status = status


class ApiClient:
    """Just enough of a Kubernetes client to bootstrap the cluster: JSON over HTTPS with a client certificate.

    Proxies from the environment are ignored: everything here is on loopback.
    """

    def __init__(self, *, server: str, ca_file: Path, cert_file: Path, key_file: Path, timeout: float = 15.0) -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        self._server = server.rstrip("/")
        self._timeout = timeout

    def raw(self, method: str, path: str, *, body: bytes | None = None,
            content_type: str = "application/json") -> tuple[int, bytes]:
        """Send a request; return (status, body) for any HTTP status. Network errors raise OSError."""
        request = urllib.request.Request(self._server + path, data=body, method=method)
        request.add_header("Accept", "application/json")
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def request(self, method: str, path: str, *, body: object = None,
                content_type: str = "application/json") -> Json:
        """Send `body` as JSON, raise ApiError on a non-2xx status, return the decoded response."""
        data = None if body is None else json.dumps(body).encode()
        status, payload = self.raw(method, path, body=data, content_type=content_type)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, payload.decode(errors="replace"))
        decoded: Json = json.loads(payload) if payload else {}
        return decoded


@dataclass
class Component:
    """A process devcluster started (a control-plane component, Prometheus, a metrics app, a controller)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ControlPlaneError(f"{self.name} exited with code {code}; the end of its log:\n"
                                    f"{self.tail()}")

    def stop(self, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)  # its own session: pid == process group id
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)


def build_binaries() -> Path:
    """Run the build script (a no-op when cached; honours SLUICE_K8S_BIN_DIR); its progress goes to our stderr."""
    result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with code {result.returncode} (its output is above)")
    return Path(lines[-1])


def go_module_dir(module: str, *, cwd: Path | None = None) -> Path:
    """The directory of a pinned Go module (`path@version`) in the module cache, downloading it if needed."""
    env = os.environ | {"GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    try:
        result = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True,
                                env=env, cwd=cwd, check=False)
    except FileNotFoundError as error:
        raise ControlPlaneError(f"go is needed to find {module}: {error}") from error
    info: Json = json.loads(result.stdout) if result.stdout.strip() else {}
    if result.returncode != 0 or "Dir" not in info:
        raise ControlPlaneError(f"go mod download {module} failed: {info.get('Error')} {result.stderr}")
    return Path(info["Dir"])


def istio_crd_file(*, cwd: Path | None = None) -> Path:
    """Istio's generated CRD file, from the pinned istio.io/api module (never a hand-written copy)."""
    return go_module_dir(ISTIO_API_MODULE, cwd=cwd) / ISTIO_CRD_FILE


def gateway_api_crd_files(*, cwd: Path | None = None) -> list[Path]:
    """Gateway API's standard-channel CRD files (not the ValidatingAdmissionPolicy that guards upgrades)."""
    directory = go_module_dir(GATEWAY_API_MODULE, cwd=cwd) / GATEWAY_API_CRD_DIR
    return sorted(p for p in directory.glob("*.yaml") if not p.name.endswith("_vap_safeupgrades.yaml"))


def smi_crd_file(*, cwd: Path | None = None) -> Path:
    """SMI's CRDs (TrafficSplit among them), in apiextensions v1beta1: install them through `crd_to_v1`."""
    return go_module_dir(SMI_SDK_MODULE, cwd=cwd) / SMI_CRD_FILE


def chart_crd_files() -> list[Path]:
    """The chart's CRDs (the single source of truth for sluice's own kinds); none yet is not an error."""
    return sorted(CHART_CRDS.glob("*.yaml")) if CHART_CRDS.is_dir() else []


def crd_documents(paths: Iterable[Path], *, kinds: Collection[str] | None = None) -> list[Json]:
    """The CustomResourceDefinition documents in `paths`, optionally only those defining one of `kinds`."""
    found = []
    for path in paths:
        for doc in yaml.load_all(path.read_text(), Loader=_YAML_LOADER):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            if kinds is None or doc["spec"]["names"]["kind"] in kinds:
                doc.pop("status", None)
                found.append(doc)
    return found


def crd_to_v1(doc: Json) -> Json:
    """An apiextensions.k8s.io/v1beta1 CustomResourceDefinition rewritten as v1, which is all API servers accept
    since 1.22; any other document comes back as it is.

    v1 wants per version what v1beta1 allowed at the top: the schema (whose root must say `type: object`), the
    printer columns (`jsonPath`, not `JSONPath`) and the subresources. `version` and `validation` go; served and
    storage flags stay. v1beta1 kept unknown fields unless `preserveUnknownFields: false`; v1 says so in the schema.
    """
    if doc.get("apiVersion") != "apiextensions.k8s.io/v1beta1":
        return doc
    out = copy.deepcopy(doc)
    out["apiVersion"] = "apiextensions.k8s.io/v1"
    spec = out["spec"]
    schema = (spec.pop("validation", None) or {}).get("openAPIV3Schema") or {}
    columns = spec.pop("additionalPrinterColumns", None)
    subresources = spec.pop("subresources", None)
    version = spec.pop("version", None)
    preserve = spec.pop("preserveUnknownFields", True)
    versions = spec.get("versions") or [{"name": version, "served": True, "storage": True}]
    for entry in versions:
        own = copy.deepcopy((entry.pop("schema", None) or {}).get("openAPIV3Schema") or schema)
        own.setdefault("type", "object")
        if preserve:
            own.setdefault("x-kubernetes-preserve-unknown-fields", True)
        entry["schema"] = {"openAPIV3Schema": own}
        own_columns = entry.pop("additionalPrinterColumns", None) or columns
        if own_columns:
            entry["additionalPrinterColumns"] = [
                {("jsonPath" if k == "JSONPath" else k): v for k, v in column.items()} for column in own_columns
            ]
        if entry.get("subresources") or subresources:
            entry["subresources"] = copy.deepcopy(entry.get("subresources") or subresources)
    spec["versions"] = versions
    conversion = spec.get("conversion") or {}
    if conversion.get("strategy") == "Webhook":
        spec["conversion"] = {"strategy": "Webhook", "webhook": {
            "clientConfig": conversion.get("webhookClientConfig") or {},
            "conversionReviewVersions": conversion.get("conversionReviewVersions") or ["v1beta1"],
        }}
    return out


def spawn(name: str, argv: Sequence[str], *, log_path: Path, cwd: Path, stdout: int | IO[bytes] | None = None,
          env: Mapping[str, str] | None = None) -> Component:
    """Start a process with its output (stdout too unless given) appended to `log_path`.

    setpriv --pdeathsig: if this Python process dies without stopping it (SIGKILL), the process gets SIGTERM
    instead of running on forever. (Linux ties it to the starting thread: a start from a thread that ends before
    the stop would end the process with it.) Its own session keeps a terminal's Ctrl-C away from it, so the caller
    alone decides the shutdown order, and stop() signals its whole process group.
    """
    prefix = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
    with log_path.open("ab") as log_file:
        process = subprocess.Popen([*prefix, *argv], stdin=subprocess.DEVNULL,
                                   stdout=log_file if stdout is None else stdout, stderr=log_file, cwd=cwd,
                                   env=None if env is None else dict(env), start_new_session=True)
    log.debug("started %s (pid %d): %s", name, process.pid, " ".join(argv))
    return Component(name=name, process=process, log_path=log_path)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open until all are chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _healthz_ok(port: int) -> bool:
    """Whether a component's /healthz answers 200; its serving cert is self-signed, and this is loopback, so the
    certificate is not verified."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(f"https://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError:
        return False


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok with fake nodes and CRDs installed.

    Use as a context manager, or call start() and stop(). Everything (PKI, kubeconfigs, etcd data, one log per
    component under logs/) lives in `workdir`, which stop() deletes.
    """

    def __init__(self, *, nodes: int = 3, startup_timeout: float = 120.0) -> None:
        self._node_count = nodes
        self._timeout = startup_timeout
        self._workdir: Path | None = None
        self._server: str | None = None
        self._ca: CertificateAuthority | None = None
        self._api: ApiClient | None = None
        self._components: list[Component] = []
        self._kubeconfig_ids = itertools.count()

    # -- public surface -------------------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("the control plane is not started")
        return self._workdir

    @property
    def server(self) -> str:
        if self._server is None:
            raise ControlPlaneError("the control plane is not started")
        return self._server

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        """An admin kubeconfig (client certificate CN=admin, O=system:masters)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def api(self) -> ApiClient:
        """A minimal admin client (stdlib only), for bootstrapping and for tools without a Kubernetes library."""
        if self._api is None:
            raise ControlPlaneError("the control plane is not started")
        return self._api

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    def client_kubeconfig(self, user: str, groups: list[str]) -> Path:
        """Write a kubeconfig for a client-certificate user (CN=user, O=groups); RBAC decides what it may do."""
        if self._ca is None:
            raise ControlPlaneError("the control plane is not started")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        path = self.workdir / "kubeconfigs" / f"{safe}-{next(self._kubeconfig_ids)}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        self._write_kubeconfig(path, user=user, pair=self._ca.issue_client(user=user, groups=groups))
        return path

    def install_crds(self, paths: Iterable[Path], *, kinds: Collection[str] | None = None) -> list[str]:
        """Server-side apply the CRDs in `paths` (optionally only those for `kinds`); wait until all are Established.

        Returns the CRD names. Server-side apply because some upstream CRDs exceed the 256 KiB annotation that
        client-side apply needs.
        """
        return self.install_crd_documents(crd_documents(paths, kinds=kinds))

    def install_crd_documents(self, docs: Iterable[Json]) -> list[str]:
        """Server-side apply CRD documents (apiextensions v1); wait until all are Established. Returns their names."""
        names = []
        for doc in docs:
            name = doc["metadata"]["name"]
            self.api.request(
                "PATCH",
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                f"?fieldManager={FIELD_MANAGER}&force=true",
                body=doc,
                content_type="application/apply-patch+yaml",  # JSON is YAML
            )
            names.append(name)
        if names:
            self._wait(f"CRDs {', '.join(names)} to be Established",
                       lambda: all(self._crd_established(name) for name in names), culprit="kube-apiserver")
        return names

    def start(self) -> None:
        if self._workdir is not None:
            raise ControlPlaneError("the control plane is already started")
        started = time.monotonic()
        atexit.register(self.stop)  # last resort; stop() unregisters it
        try:
            self._workdir = Path(tempfile.mkdtemp(prefix="sluice-cp-"))
            (self._workdir / "logs").mkdir()
            bin_dir = build_binaries()
            self._write_pki()
            self._start_components(bin_dir)
            self._create_nodes()
            self.install_crd_documents(self._crds())
        except BaseException:
            self.stop()
            raise
        log.info("control plane ready at %s in %.1fs (workdir %s)", self._server, time.monotonic() - started,
                 self._workdir)

    def stop(self) -> None:
        """Stop every component (newest first; SIGTERM, then SIGKILL) and delete the workdir. Idempotent."""
        atexit.unregister(self.stop)
        while self._components:
            self._components.pop().stop(grace=5.0)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = self._server = self._api = self._ca = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- start-up -------------------------------------------------------------------------------------------------

    def _crds(self) -> list[Json]:
        """sluice's CRDs and the routers' upstream ones, installed in one batch (one wait for Established)."""
        cwd = self.workdir
        return [
            *crd_documents(chart_crd_files()),
            *crd_documents([istio_crd_file(cwd=cwd)], kinds=ISTIO_KINDS),
            *crd_documents(gateway_api_crd_files(cwd=cwd), kinds=GATEWAY_API_KINDS),
            *(crd_to_v1(doc) for doc in crd_documents([smi_crd_file(cwd=cwd)], kinds=SMI_KINDS)),
        ]

    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir()
        self._ca = ca = CertificateAuthority.create()
        ca.pair.write(cert_path=pki / "ca.crt", key_path=pki / "ca.key")
        ca.issue_serving(
            common_name="kube-apiserver",
            dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local"],
            ips=["127.0.0.1", KUBERNETES_SERVICE_IP],
        ).write(cert_path=pki / "apiserver.crt", key_path=pki / "apiserver.key")
        ca.issue_client(user="admin", groups=["system:masters"]).write(
            cert_path=pki / "admin.crt", key_path=pki / "admin.key")
        service_account_keypair().write(cert_path=pki / "sa.pub", key_path=pki / "sa.key")

    def _start_components(self, bin_dir: Path) -> None:
        pki = self.workdir / "pki"
        etcd_port, peer_port, api_port, kcm_port, sched_port = free_ports(5)
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._launch("etcd", [
            str(bin_dir / "etcd"), "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait("etcd to be healthy", lambda: _etcd_healthy(etcd_url))

        self._server = f"https://127.0.0.1:{api_port}"
        self._launch("kube-apiserver", [
            str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}", f"--secure-port={api_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", "--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount",
            f"--service-account-issuer={self._server}", f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--endpoint-reconciler-type=none",  # the API server refuses loopback addresses in Endpoints
        ])
        self._api = ApiClient(server=self._server, ca_file=pki / "ca.crt", cert_file=pki / "admin.crt",
                              key_file=pki / "admin.key")
        self._wait("kube-apiserver to be ready", self._apiserver_ready)
        self._write_kubeconfig(self.kubeconfig, user="admin",
                               pair=KeyPair((pki / "admin.crt").read_bytes(), (pki / "admin.key").read_bytes()))

        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        self._launch("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"), kubeconfig, "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}", "--leader-elect=false", f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics", "--controllers=*",
        ])
        self._launch("kube-scheduler", [
            str(bin_dir / "kube-scheduler"), kubeconfig, "--bind-address=127.0.0.1",
            f"--secure-port={sched_port}", "--leader-elect=false",
        ])
        kwok_dir = go_module_dir(KWOK_MODULE, cwd=self.workdir)
        self._launch("kwok", [
            str(bin_dir / "kwok"), kubeconfig, "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake", f"--cidr={POD_CIDR}",
            f"--node-ip={NODE_IP}",
            # Without a lease duration kwok renews no node leases: the node-lifecycle controller then sees the nodes
            # go silent after its grace period, marks them NotReady and every pod on them unready, mid-test.
            "--node-lease-duration-seconds=40",
            # No --server-address/--node-port: without them kwok opens no port (no logs/exec emulation needed).
            *(f"--config={kwok_dir / stage}" for stage in KWOK_STAGES),
        ], home=self.workdir)  # a private HOME keeps a user's ~/.kwok/kwok.yaml out
        for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", sched_port)):
            self._wait(f"{name} to be healthy", functools.partial(_healthz_ok, port), culprit=name)

    def _launch(self, name: str, argv: Sequence[str], *, home: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        if home is not None:
            env["HOME"] = str(home)
        self._components.append(spawn(name, argv, log_path=self.log_path(name), cwd=self.workdir, env=env))

    def _wait(self, what: str, probe: Callable[[], bool], *, culprit: str | None = None) -> None:
        """Poll `probe` until true, checking that every component is still alive; on timeout show the log of
        `culprit` (default: the newest component)."""
        started = time.monotonic()
        deadline = started + self._timeout
        while True:
            for component in self._components:
                component.check_alive()
            try:
                if probe():
                    log.info("%s: done in %.1fs", what, time.monotonic() - started)
                    return
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                suspects = [c for c in self._components if culprit in (None, c.name)]
                evidence = f"; the end of {suspects[-1].name}'s log:\n{suspects[-1].tail()}" if suspects else ""
                raise ControlPlaneError(f"timed out after {self._timeout:g}s waiting for {what}{evidence}")
            time.sleep(0.1)

    def _apiserver_ready(self) -> bool:
        status, _ = self.api.raw("GET", "/readyz")
        return status == 200

    def _create_nodes(self) -> None:
        for index in range(self._node_count):
            self.api.request("POST", "/api/v1/nodes", body=_node(f"kwok-node-{index}"))
        self._wait(f"{self._node_count} kwok nodes to be Ready", self._nodes_ready)

    def _nodes_ready(self) -> bool:
        nodes = self.api.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")["items"]
        ready = [n for n in nodes if _condition(n, "Ready") == "True"]
        return len(ready) == self._node_count

    def _crd_established(self, name: str) -> bool:
        crd = self.api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return _condition(crd, "Established") == "True"

    def _write_kubeconfig(self, path: Path, *, user: str, pair: KeyPair) -> None:
        # Credentials are embedded so the file stands alone (copy it anywhere while the cluster runs).
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sluice-dev", "cluster": {
                "server": self.server, "certificate-authority-data": _b64(self.ca_file.read_bytes())}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": _b64(pair.cert_pem), "client-key-data": _b64(pair.key_pem)}}],
            "contexts": [{"name": "sluice-dev", "context": {"cluster": "sluice-dev", "user": user}}],
            "current-context": "sluice-dev",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)


def _etcd_healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/health", timeout=5) as response:
        return bool(json.load(response).get("health") == "true")


def _node(name: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/agent": ""},
        },
        "spec": {},
        "status": {"allocatable": NODE_ALLOCATABLE, "capacity": NODE_ALLOCATABLE},
    }


def _condition(obj: Json, kind: str) -> str | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status"))
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
