"""A pod watch that records every event of a namespace's TrainingJob pods, across API server restarts."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from respawn_protocol.crd import LABEL_JOB
from tests.support.chaos.common import PodEvent


class PodRecorder:
    """A pod watch on the namespace, resumed across API server restarts, recording every event."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.events: list[PodEvent] = []
        self.relists = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-recorder", daemon=True)
        self._known: dict[str, str] = {}
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(60):
            raise TimeoutError("the pod watch did not start")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)

    def _record(self, kind: str, pod: Any, exact: bool = True) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        if LABEL_JOB not in (meta.get("labels") or {}):
            return
        self.events.append(
            PodEvent(
                time.monotonic(),
                kind,
                meta["name"],
                meta["uid"],
                int(meta["resourceVersion"]),
                status.get("phase", ""),
                (pod.get("spec") or {}).get("nodeName"),
                bool(meta.get("deletionTimestamp")),
                exact,
            )
        )
        if kind == "DELETED":
            self._known.pop(meta["uid"], None)
        else:
            self._known[meta["uid"]] = meta["name"]

    def _relist(self, core: client.CoreV1Api) -> str:
        raw = json.loads(
            core.list_namespaced_pod(self.namespace, _preload_content=False, _request_timeout=10).data
        )
        rv = raw["metadata"]["resourceVersion"]
        seen = {p["metadata"]["uid"] for p in raw["items"]}
        first = not self.ready.is_set()
        for uid, name in list(self._known.items()):
            if uid not in seen:  # deleted while we were not watching: only a bound on when
                self.events.append(
                    PodEvent(time.monotonic(), "DELETED", name, uid, int(rv), "", None, True, False)
                )
                self._known.pop(uid)
        for pod in raw["items"]:
            self._record("ADDED", pod, exact=first)
        self.relists += 0 if first else 1
        return rv

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            api = None
            try:
                api = config.new_client_from_config(config_file=str(self.kubeconfig))
                core = client.CoreV1Api(api)
                if rv is None:
                    rv = self._relist(core)
                    self.ready.set()
                w = watch.Watch()
                for ev in w.stream(
                    core.list_namespaced_pod,
                    self.namespace,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                    _preload_content=False,
                    _request_timeout=(3, 15),
                ):
                    obj = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # too old (e.g. the API server's watch cache restarted): relist
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        self._record(ev["type"], obj)
                    if self._stop.is_set():
                        break
            except client.ApiException as exc:
                if exc.status == 410:
                    rv = None
                self._stop.wait(0.2)
            except Exception:  # connection refused while the API server restarts
                self._stop.wait(0.2)
            finally:
                if api is not None:
                    api.close()
