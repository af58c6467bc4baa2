"""How sluice tells people what it did: Kubernetes Events on the Rollout and one structured log line per event.

SREs look at `kubectl describe rollout` (Events) and at the controller's logs; both carry the same facts. Logs are
text by default and JSON with `--log-format json`, with the fields rollout, revision, step, weight and decision on
every line that concerns a Rollout. Emitting an Event may fail (RBAC, API hiccup): that is logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

from rollout.kube import EVENTS, ApiError, Body, KubeClient
from strategies.decision import Event
from strategies.model import format_time

log = logging.getLogger("sluice")

CONTEXT_FIELDS = ("rollout", "revision", "step", "weight", "decision")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in (*CONTEXT_FIELDS, "reason"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k))
        return f"{base} [{context}]" if context else base


def configure_logging(*, level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kubernetes-asyncio logs request bodies at debug level; they can carry Secrets' data.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.WARNING)


class Reporter:
    """Emits Events for a Rollout and the matching log lines."""

    def __init__(self, client: KubeClient, *, component: str) -> None:
        self._client = client
        self._component = component
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()

    async def emit(self, rollout: Body, events: tuple[Event, ...], *, context: dict[str, Any]) -> None:
        for event in events:
            extra = {**context, "reason": event.reason}
            log.log(logging.WARNING if event.warning else logging.INFO, "%s: %s", event.reason, event.message,
                    extra=extra)
            try:
                await self._client.create(EVENTS, self._event_body(rollout, event), namespace=_namespace(rollout))
            except ApiError as exc:
                log.warning("could not record Event %s: %s", event.reason, exc, extra=context)

    def _event_body(self, rollout: Body, event: Event) -> Body:
        meta = rollout["metadata"]
        now = format_time(datetime.now(UTC))
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": rollout.get("apiVersion", "sluice.dev/v1alpha1"), "kind": "Rollout",
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": "Warning" if event.warning else "Normal",
            "source": {"component": self._component},
            "reportingComponent": f"sluice.dev/{self._component}",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }


def _namespace(rollout: Body) -> str:
    return str(rollout["metadata"]["namespace"])
