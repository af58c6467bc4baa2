"""The local control plane is a real cluster: a ReplicaSet gets its pods scheduled onto the kwok nodes, where they
become Running and Ready with no kubelet, and RBAC applies to client-certificate users.

Talks to the cluster through kubernetes_asyncio with the kubeconfigs devcluster writes, not through devcluster's own
bootstrap client, so the kubeconfigs are checked too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from devcluster import ControlPlane
from tests.integration.kit import wait_for

pytestmark = pytest.mark.integration

IMAGE = "registry.example/app:1"


@asynccontextmanager
async def _api(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration=configuration) as api:
        yield api


def _replica_set(name: str, replicas: int) -> client.V1ReplicaSet:
    labels = {"app": name}
    container = client.V1Container(name="app", image=IMAGE, ports=[client.V1ContainerPort(container_port=8080)])
    return client.V1ReplicaSet(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1ReplicaSetSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels),
                                              spec=client.V1PodSpec(containers=[container])),
        ),
    )


def _running_and_ready(pod: client.V1Pod) -> bool:
    status = pod.status
    if status is None or status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


async def test_replicaset_pods_become_running_and_ready_on_kwok_nodes(control_plane: ControlPlane) -> None:
    namespace = f"control-plane-{uuid.uuid4().hex[:8]}"
    async with _api(control_plane.kubeconfig) as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        try:
            await apps.create_namespaced_replica_set(namespace, _replica_set("app", 3))

            async def all_available() -> list[client.V1Pod] | None:
                rs = await apps.read_namespaced_replica_set("app", namespace)
                pods = (await core.list_namespaced_pod(namespace, label_selector="app=app")).items
                available = rs.status.available_replicas if rs.status else None
                ready = [p for p in pods if _running_and_ready(p)]
                return pods if available == 3 and len(ready) == 3 else None

            pods = await wait_for(all_available, what="3 available replicas, their pods Running and Ready")
            assert all(p.spec and (p.spec.node_name or "").startswith("kwok-node-") for p in pods)
            assert all(p.status and p.status.pod_ip for p in pods)  # kwok hands out IPs from its --cidr
            assert [c.image for p in pods if p.spec for c in p.spec.containers] == [IMAGE] * 3
        finally:
            await core.delete_namespace(namespace)


async def test_client_certificate_user_without_rbac_is_forbidden_to_list_pods(control_plane: ControlPlane) -> None:
    kubeconfig = control_plane.client_kubeconfig("sluice-test-nobody", ["sluice:testers"])
    async with _api(kubeconfig) as api:
        with pytest.raises(ApiException) as raised:
            await client.CoreV1Api(api).list_namespaced_pod("default")
    assert raised.value.status == 403
    # Forbidden for this user, not for system:anonymous: the API server authenticated the certificate.
    assert 'User "sluice-test-nobody"' in json.loads(raised.value.body or "{}")["message"]


async def test_fake_nodes_keep_renewing_their_leases(control_plane: ControlPlane) -> None:
    # Without renewals the node-lifecycle controller marks the nodes NotReady after its grace period and every pod on
    # them unready: rollouts in long tests would then stall for reasons that have nothing to do with sluice.
    async with _api(control_plane.kubeconfig) as api:
        leases = client.CoordinationV1Api(api)
        first = {lease.metadata.name: lease.spec.renew_time
                 for lease in (await leases.list_namespaced_lease("kube-node-lease")).items}
        assert {f"kwok-node-{i}" for i in range(3)} <= set(first)

        async def renewed() -> bool:
            now = {lease.metadata.name: lease.spec.renew_time
                   for lease in (await leases.list_namespaced_lease("kube-node-lease")).items}
            return all(now[name] != first[name] for name in first)

        await wait_for(renewed, what="every node lease renewed", timeout=45)
