"""From a pod spec to what the shim needs: volumes as host directories, environment, hostname.

Images are ignored, so everything a container sees comes from here: its command and args, the
environment kubelet would build (service variables, envFrom, env with fieldRef,
resourceFieldRef, configMapKeyRef and secretKeyRef, $(VAR) expansion), and volumes mapped to
host paths:

    hostPath               that path (type checks as kubelet does)
    emptyDir, ephemeral    <pod dir>/volumes/<name>
    persistentVolumeClaim  <pvc root>/<namespace>/<claimName>
    configMap, secret,     files written into <pod dir>/volumes/<name>
    downwardAPI, projected   (projected serviceAccountToken: a TokenRequest for the pod's SA)

A missing ConfigMap/Secret referenced by env is a ConfigError (kubelet's
CreateContainerConfigError); one referenced by a volume is a VolumeError (the pod stays
ContainerCreating); both are retried.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.utils.quantity import parse_quantity

from devcluster.kubeapi import Kube, call
from devcluster.podrunner import LaunchSpec, Mount
from devcluster.statedir import write_atomic

log = logging.getLogger(__name__)
Obj = dict[str, Any]
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ConfigError(Exception):
    """A container's configuration cannot be resolved (yet): CreateContainerConfigError."""


class VolumeError(Exception):
    """A volume cannot be set up (yet): the pod stays ContainerCreating."""


class NoCommandError(Exception):
    """Images are ignored, so a container must say what to run."""


@dataclass(frozen=True)
class PodPlace:
    """Where the pod runs and how the agent is configured for it."""

    node_name: str
    host_ip: str
    pod_ip: str
    pod_dir: Path
    pvc_root: Path
    cluster_domain: str
    base_env: dict[str, str]
    node_allocatable: dict[str, str]
    image_entrypoints: dict[str, list[str]] = field(default_factory=dict)

    def entrypoint(self, image: str) -> list[str] | None:
        """The stand-in for an image's ENTRYPOINT (--image-entrypoint), by exact name or name without tag."""
        if image in self.image_entrypoints:
            return self.image_entrypoints[image]
        bare = image.split("@", 1)[0]
        if ":" in bare.rsplit("/", 1)[-1]:
            bare = bare.rsplit(":", 1)[0]
        return self.image_entrypoints.get(bare)


def hostname_of(pod: Obj) -> tuple[str, str | None]:
    """(hostname, subdomain) as kubelet derives them: spec.hostname or the pod name cut to 63."""
    spec = pod.get("spec", {})
    hostname = spec.get("hostname") or pod["metadata"]["name"][:63].rstrip("-.")
    return hostname, spec.get("subdomain") or None


@dataclass
class _Token:
    path: Path
    audience: str | None
    seconds: int
    refresh_at: float


@dataclass
class Volumes:
    """The pod's volumes on the host; `tokens` are re-requested before they expire."""

    paths: dict[str, Path] = field(default_factory=dict)
    read_only: set[str] = field(default_factory=set)
    tokens: list[_Token] = field(default_factory=list)

    def next_refresh(self) -> float | None:
        return min((t.refresh_at for t in self.tokens), default=None)


class PodSetup:
    def __init__(self, kube: Kube, pod: Obj, place: PodPlace) -> None:
        self._kube = kube
        self.pod = pod
        self.place = place
        self._ns = pod["metadata"]["namespace"]

    # -- lookups ----------------------------------------------------------------------------------

    def _read(self, kind: str, name: str) -> Obj | None:
        fn = (
            self._kube.core.read_namespaced_config_map
            if kind == "configmap"
            else self._kube.core.read_namespaced_secret
        )
        try:
            return call(fn, name, self._ns)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _data(self, kind: str, name: str) -> dict[str, bytes] | None:
        obj = self._read(kind, name)
        if obj is None:
            return None
        if kind == "configmap":
            data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            data |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
            return data
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    # -- downward API -----------------------------------------------------------------------------

    def field_value(self, path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod.get("spec", {})
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.place.node_name,
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": self.place.pod_ip,
            "status.podIPs": self.place.pod_ip,
            "status.hostIP": self.place.host_ip,
            "status.hostIPs": self.place.host_ip,
        }
        if path not in simple:
            raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")
        return simple[path]

    def resource_value(self, ref: Obj, default_container: str | None) -> str:
        name = ref.get("containerName") or default_container
        containers = [*self.pod["spec"].get("containers", []), *self.pod["spec"].get("initContainers", [])]
        container = next((c for c in containers if c["name"] == name), None)
        if container is None:
            raise ConfigError(f"resourceFieldRef: no container {name!r}")
        kind, _, resource = ref["resource"].partition(".")
        value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
        if value is None and kind == "limits":
            value = self.place.node_allocatable.get(resource)
        quantity = parse_quantity(value) if value is not None else Decimal(0)
        divisor = parse_quantity(ref.get("divisor") or "1")
        return str(math.ceil(quantity / divisor))

    # -- environment ------------------------------------------------------------------------------

    def env(self, container: Obj, service_env: dict[str, str]) -> dict[str, str]:
        """The container's environment, in kubelet's order; raises ConfigError."""
        env = dict(self.place.base_env) | dict(service_env)
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            kind = "configmap" if "configMapRef" in source else "secret"
            data = self._data(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind} "{ref["name"]}" not found')
            for key, value in data.items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = value.decode(errors="replace")
        for var in container.get("env") or []:
            env[var["name"]] = self._env_value(var, env, container["name"])
        return env

    def _env_value(self, var: Obj, env: dict[str, str], container_name: str) -> str:
        if "valueFrom" not in var:
            return expand(var.get("value", ""), env)
        source = var["valueFrom"]
        if "fieldRef" in source:
            return self.field_value(source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return self.resource_value(source["resourceFieldRef"], container_name)
        for key, kind in (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")):
            if key in source:
                ref = source[key]
                data = self._data(kind, ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        return ""
                    if data is None:
                        raise ConfigError(f'{kind} "{ref["name"]}" not found')
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind} {self._ns}/{ref['name']}")
                return data[ref["key"]].decode(errors="replace")
        raise ConfigError(f"unsupported valueFrom in env {var['name']!r}")

    # -- volumes ----------------------------------------------------------------------------------

    def volumes(self) -> Volumes:
        """Set up every volume of the pod; raises VolumeError."""
        out = Volumes()
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            own = self.place.pod_dir / "volumes" / name
            if "hostPath" in volume:
                out.paths[name] = _host_path(volume["hostPath"])
            elif "emptyDir" in volume or "ephemeral" in volume:
                own.mkdir(parents=True, exist_ok=True)
                out.paths[name] = own
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]
                path = self.place.pvc_root / self._ns / claim["claimName"]
                path.mkdir(parents=True, exist_ok=True)
                out.paths[name] = path
                if claim.get("readOnly"):
                    out.read_only.add(name)
            elif any(k in volume for k in ("configMap", "secret", "downwardAPI", "projected")):
                own.mkdir(parents=True, exist_ok=True)
                self._fill(volume, own, out)
                out.paths[name] = own
                out.read_only.add(name)
            else:
                kinds = sorted(set(volume) - {"name"})
                raise VolumeError(
                    f"volume {name!r}: unsupported volume type {kinds} on the devcluster node agent"
                )
        return out

    def _fill(self, volume: Obj, directory: Path, out: Volumes) -> None:
        if "projected" in volume:
            default_mode = volume["projected"].get("defaultMode", 0o644)
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    token = source["serviceAccountToken"]
                    entry = _Token(
                        directory / token["path"],
                        token.get("audience"),
                        int(token.get("expirationSeconds", 3607)),
                        0.0,
                    )
                    self.refresh_token(entry, mode=default_mode)
                    out.tokens.append(entry)
                else:
                    self._fill_source(source, directory, default_mode)
            return
        kind = next(k for k in ("configMap", "secret", "downwardAPI") if k in volume)
        self._fill_source(volume, directory, volume[kind].get("defaultMode", 0o644))

    def _fill_source(self, source: Obj, directory: Path, default_mode: int) -> None:
        if "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" in item:
                    value = self.field_value(item["fieldRef"]["fieldPath"])
                else:
                    value = self.resource_value(item["resourceFieldRef"], None)
                _write_item(directory, item["path"], value.encode(), item.get("mode", default_mode))
            return
        kind_key = "configMap" if "configMap" in source else "secret"
        ref = source[kind_key]
        name = ref.get("name") or ref.get("secretName")
        data = self._data("configmap" if kind_key == "configMap" else "secret", name)
        if data is None and kind_key == "configMap" and name == "kube-root-ca.crt":
            # Published by kube-controller-manager, which the tests do not run.
            data = {"ca.crt": self._kube.ca_pem()}
        if data is None:
            if ref.get("optional"):
                return
            raise VolumeError(f'{kind_key.lower()} "{name}" not found')
        items = ref.get("items")
        if items is None:
            items = [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise VolumeError(f"{kind_key} {name}: no key {item['key']!r}")
            _write_item(
                directory,
                item["path"],
                data[item["key"]],
                item.get("mode", ref.get("defaultMode", default_mode)),
            )

    def refresh_token(self, token: _Token, *, mode: int = 0o644) -> None:
        """TokenRequest bound to the pod, as kubelet's token manager does (renewed at 80% of its life)."""
        meta = self.pod["metadata"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [token.audience] if token.audience else [],
                "expirationSeconds": token.seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        account = self.pod["spec"].get("serviceAccountName") or "default"
        try:
            answer = call(self._kube.core.create_namespaced_service_account_token, account, self._ns, body)
        except client.ApiException as exc:
            raise VolumeError(f"token for service account {self._ns}/{account}: HTTP {exc.status}") from exc
        write_atomic(token.path, answer["status"]["token"], mode=mode)
        token.refresh_at = time.monotonic() + 0.8 * token.seconds

    # -- the whole container ----------------------------------------------------------------------

    def launch_spec(
        self, container: Obj, volumes: Volumes, *, env: dict[str, str], hostname: str, hosts_file: str | None
    ) -> LaunchSpec:
        command = container.get("command") or self.place.entrypoint(container.get("image") or "")
        if not command:
            raise NoCommandError(
                f"container {container['name']!r} has no command: the devcluster node agent ignores images "
                f"({container.get('image')!r}), so it has no entrypoint to run (give the container a "
                "command, or start the agent with --image-entrypoint IMAGE=COMMAND)"
            )
        argv = [expand(a, env) for a in [*command, *(container.get("args") or [])]]
        mounts = []
        for vm in container.get("volumeMounts") or []:
            if vm["name"] not in volumes.paths:
                raise VolumeError(f"volumeMount {vm['mountPath']}: no volume {vm['name']!r}")
            source = volumes.paths[vm["name"]]
            sub = vm.get("subPath") or expand(vm.get("subPathExpr", ""), env)
            if sub:
                source = source / sub
                if not source.exists():
                    source.mkdir(parents=True)
            read_only = bool(vm.get("readOnly")) or vm["name"] in volumes.read_only
            mounts.append(Mount(str(source), vm["mountPath"], read_only))
        termination_log = self.place.pod_dir / f"{container['name']}.termination-log"
        termination_log.write_bytes(b"")
        mounts.append(
            Mount(
                str(termination_log),
                container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH,
            )
        )
        return LaunchSpec(
            argv=argv,
            env=env,
            cwd=container.get("workingDir"),
            hostname=hostname,
            mounts=mounts,
            hosts_file=hosts_file,
        )


def _host_path(source: Obj) -> Path:
    path = Path(source["path"])
    kind = source.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    elif kind == "Directory" and not path.is_dir():
        raise VolumeError(f"hostPath type check failed: {path} is not a directory")
    elif kind == "File" and not path.is_file():
        raise VolumeError(f"hostPath type check failed: {path} is not a file")
    elif kind in ("Socket", "CharDevice", "BlockDevice") and not path.exists():
        raise VolumeError(f"hostPath type check failed: {path} does not exist")
    elif not kind and not path.exists():
        # An unchecked hostPath that does not exist is created as a directory, as kubelet does.
        path.mkdir(parents=True, exist_ok=True)
    return path


def _write_item(directory: Path, relative: str, data: bytes, mode: int) -> None:
    target = (directory / relative).resolve()
    if directory.resolve() not in target.parents:
        raise VolumeError(f"item path {relative!r} escapes its volume")
    write_atomic(target, data, mode=mode)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined names are replaced, `$$` is a literal `$`, the rest stays."""
    out = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def service_env(host: str, port: int) -> dict[str, str]:
    """The `kubernetes` Service variables, pointing at the real API server."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def default_path(agent_python: str) -> str:
    """The agent's PATH with its interpreter's directory first: `python` in a pod is the agent's."""
    first = str(Path(agent_python).parent)
    rest = [p for p in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":") if p and p != first]
    return ":".join([first, *rest])
