"""Malformed TrainingJobs: the API server rejects what the schema can see, with a message that
names the field; what it cannot see, the controller fails once with a clear condition."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.manifests import training_job

VALID = training_job("job", image="t", command=["python"])


def mutate(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return body


_DELETE = object()
HUGE = "x" * 100_000
STORE = {"endpoint": "http://seaweedfs.storage:8333", "bucket": "ckpt", "credentialsSecret": "s3-keys"}

CASES = [
    ("spec.replicas", "2", "spec.replicas in body must be of type integer"),
    ("spec.replicas", 0, "spec.replicas in body should be greater than or equal to 1"),
    ("spec.replicas", -3, "spec.replicas in body should be greater than or equal to 1"),
    ("spec.replicas", 1_000_000, "spec.replicas in body should be less than or equal to 4096"),
    ("spec.replicas", _DELETE, "spec.replicas: Required value"),
    ("spec.template", _DELETE, "spec.template: Required value"),
    (
        "spec.template.spec.containers",
        [],
        "spec.template.spec.containers in body should have at least 1 items",
    ),
    ("spec.template.spec.restartPolicy", "Always", 'supported values: "Never"'),
    ("spec.outputDir", "../../etc", "outputDir must not contain '..' segments"),
    ("spec.outputDir", "team/../../../root", "outputDir must not contain '..' segments"),
    ("spec.outputDir", "/etc/passwd", "must not start with '/'"),
    ("spec.outputDir", HUGE, "spec.outputDir: Too long"),
    ("spec.outputDir", "team/./job", "outputDir must be normalized"),
    ("spec.outputDir", "team//job", "outputDir must be normalized"),
    ("spec.outputDir", "team/job/", "outputDir must be normalized"),
    ("spec.outputDir", "", "outputDir must be normalized"),
    ("spec.outputDir", "team/\x00job", "outputDir must not contain control characters"),
    ("spec.outputDir", "team/\njob", "outputDir must not contain control characters"),
    ("spec.sharedVolume", {"volume": {}, "mountPath": "/mnt/"}, "mountPath must be normalized"),
    ("spec.sharedVolume", {"volume": {}, "mountPath": "/"}, "mountPath must be normalized"),
    ("spec.sharedVolume", {"volume": {}, "mountPath": "/mnt/../etc"}, "mountPath must be normalized"),
    ("spec.sharedVolume", {"volume": {}, "mountPath": "/mnt/./x"}, "mountPath must be normalized"),
    ("spec.sharedVolume", {"volume": {}, "mountPath": "/mnt/\tx"}, "mountPath must not contain control"),
    ("spec.trainerContainer", HUGE, "spec.trainerContainer: Too long"),
    ("spec.sharedVolume", {"mountPath": "/mnt"}, "spec.sharedVolume.volume: Required value"),
    ("spec.sharedVolume", {"volume": {}, "mountPath": "relative"}, "mountPath must be an absolute path"),
    ("spec.failurePolicy", {"maxRestarts": -1}, "maxRestarts in body should be greater than or equal to 0"),
    ("spec.failurePolicy", {"maxRestarts": "many"}, "maxRestarts in body must be of type integer"),
    (
        "spec.failurePolicy",
        {"backoff": {"initialSeconds": 600, "maxSeconds": 60}},
        "backoff.maxSeconds must be greater than or equal to backoff.initialSeconds",
    ),
    (
        "spec.failurePolicy",
        {"backoff": {"initialSeconds": -1}},
        "initialSeconds in body should be greater than or",
    ),
    (
        "spec.failurePolicy",
        {"rules": [{"action": "RestartJob"}]},
        "each failurePolicy rule needs exactly one of onExitCodes, onPodConditions or onReasons",
    ),
    (
        "spec.failurePolicy",
        {
            "rules": [
                {
                    "action": "RestartJob",
                    "onReasons": ["Error"],
                    "onExitCodes": {"operator": "In", "values": [1]},
                }
            ]
        },
        "each failurePolicy rule needs exactly one of onExitCodes, onPodConditions or onReasons",
    ),
    (
        "spec.failurePolicy",
        {"rules": [{"action": "Reboot", "onReasons": ["Error"]}]},
        'supported values: "RestartJob"',
    ),
    (
        "spec.failurePolicy",
        {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [300]}}]},
        "should be less than or equal to 255",
    ),
    (
        "spec.failurePolicy",
        {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "Maybe", "values": [1]}}]},
        'supported values: "In", "NotIn"',
    ),
    (
        "spec.failurePolicy",
        {"progressTimeoutSeconds": -5},
        "progressTimeoutSeconds in body should be greater than",
    ),
    (
        "spec.failurePolicy",
        {"startupTimeoutSeconds": -1},
        "startupTimeoutSeconds in body should be greater than or equal to 0",
    ),
    (
        "spec.failurePolicy",
        {"startupTimeoutSeconds": 10_000_000},
        "startupTimeoutSeconds in body should be less than or equal to 604800",
    ),
    (
        "spec.failurePolicy",
        {"progressGraceSeconds": -1},
        "progressGraceSeconds in body should be greater than",
    ),
    (
        "spec",
        {**VALID["spec"], "replicas": 4096, "ranksPerPod": 17},
        "the gang may have at most 65536 ranks (replicas x ranksPerPod)",
    ),
    ("spec.schedulerPort", 80, "spec.schedulerPort in body should be greater than or equal to 1024"),
    ("spec.checkpointStore", {"bucket": "b", "endpoint": "http://s3:8333"}, "credentialsSecret: Required"),
    ("spec.checkpointStore", {**STORE, "endpoint": "ftp://s3"}, "endpoint must be http(s)://host[:port]"),
    (
        "spec.checkpointStore",
        {**STORE, "endpoint": "http://k:s@s3"},
        "endpoint must be http(s)://host[:port]",
    ),
    (
        "spec.checkpointStore",
        {**STORE, "endpoint": "http://s3/b/p"},
        "endpoint must be http(s)://host[:port]",
    ),
    ("spec.checkpointStore", {**STORE, "bucket": "Caps"}, "checkpointStore.bucket in body should match"),
    ("spec.checkpointStore", {**STORE, "prefix": "a/../b"}, "checkpointStore.prefix must be segments"),
    ("spec.checkpointStore", {**STORE, "prefix": "/a"}, "checkpointStore.prefix must be segments"),
    ("spec.checkpointStore", {**STORE, "prefix": "a b"}, "checkpointStore.prefix must be segments"),
    (
        "spec.checkpointStore",
        {**STORE, "credentialsSecret": "Keys!"},
        "credentialsSecret in body should match",
    ),
    ("metadata.name", "Job-With-Caps", "a lowercase RFC 1123 subdomain"),
    ("metadata.name", "j" * 50, "the name must be a DNS-1035 label of at most 40 characters"),
    ("metadata.name", "7up", "the name must be a DNS-1035 label of at most 40 characters"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[f"{c[0]}={str(c[1])[:20]}" for c in CASES])
def test_malformed_jobs_are_rejected_by_the_api_server(
    api_client: client.ApiClient, namespace: str, path: str, value: Any, message: str
) -> None:
    with pytest.raises(ApiException) as raised:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, mutate(path, value)
        )
    assert raised.value.status == 422
    assert message in json.loads(raised.value.body)["message"]


def test_the_valid_job_is_accepted(api_client: client.ApiClient, namespace: str) -> None:
    created = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, copy.deepcopy(VALID)
    )
    assert created["spec"]["failurePolicy"]["maxRestarts"] == 3


def test_a_job_with_a_checkpoint_store_is_accepted(api_client: client.ApiClient, namespace: str) -> None:
    store = {
        **STORE,
        "endpoint": "https://obs.example.com:443/",
        "prefix": "team-a/llama_7b/v1.2",
        "region": "cn-1",
    }
    body = mutate("spec.checkpointStore", store)
    created = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    assert created["spec"]["checkpointStore"] == store
