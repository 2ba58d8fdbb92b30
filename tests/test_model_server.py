"""The stand-in tensorflow_model_server as a real process on 127.0.0.1: TF Serving's flags, version
policy and polling, its gRPC services answering the real tensorflow-serving-api stubs, and no request
that crashes it (a bounded fuzz over bodies, headers, paths and methods)."""

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from robustcl.serving import robustness
from robustcl.serving.client import GrpcClient, RestClient, SavedModelBackend, ServerError
from robustcl.serving.export import export
from tests.conftest import REPO, ModelServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exports(undefended, tmp_path_factory):
    """Versions 1 and 2 of the tiny network (2 is the network with its logits doubled, so the two
    versions answer differently) in a staging directory."""
    network, x, y = undefended
    staging = str(tmp_path_factory.mktemp("staging"))
    export(network, (32, 32, 3), staging, "tiny")
    import keras

    images = keras.Input((32, 32, 3))
    doubled = keras.Model(images, {"logits": 2.0 * network(images)["logits"]})
    export(doubled, (32, 32, 3), staging, "tiny")
    return network, x, y, os.path.join(staging, "tiny")


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    """One server for two models from a model config file: `latest` (default policy, versions
    added and removed by the tests) and `pinned` (specific version 1, label stable -> 1)."""
    _, _, _, staging = exports
    root = tmp_path_factory.mktemp("served")
    latest, pinned = root / "latest", root / "pinned"
    shutil.copytree(os.path.join(staging, "1"), latest / "1")
    for version in ("1", "2"):
        shutil.copytree(os.path.join(staging, version), pinned / version)
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "latest" base_path: "{latest}" model_platform: "tensorflow" }}
  config {{
    name: "pinned" base_path: "{pinned}" model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 }} }}
    version_labels {{ key: "stable" value: 1 }}
  }}
}}
""")
    server = ModelServer(None, f"--model_config_file={config}")
    yield server, latest
    server.stop()


def _stubs(server):
    channel = grpc.insecure_channel(server.grpc)
    return (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def _predict_request(model, images, version=None, label=None, signature="", alias="images"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(images))
    return request


def _status(stub, model):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = stub.GetModelStatus(request, timeout=30)
    return [
        (s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state)) for s in response.model_version_status
    ]


def test_grpc_services_answer_the_real_stubs(served, exports):
    server, _ = served
    network, x, _, _ = exports
    prediction, models = _stubs(server)
    response = prediction.Predict(_predict_request("pinned", x[:5], signature="serving_default"), timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
        "pinned",
        1,
        "serving_default",
    )
    assert set(response.outputs) == {"logits", "probabilities"}
    # Outputs in typed fields, as TF Serving's AsProtoField writes them.
    assert len(response.outputs["logits"].float_val) == 50 and not response.outputs["logits"].tensor_content
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["logits"]), network(x[:5], training=False)["logits"], rtol=1e-5, atol=1e-5
    )
    by_label = prediction.Predict(_predict_request("pinned", x[:1], label="stable"), timeout=30)
    assert by_label.model_spec.version.value == 1

    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_request.model_spec.name = "pinned"
    metadata_request.metadata_field.append("signature_def")
    metadata = prediction.GetModelMetadata(metadata_request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "serving_uint8", "logits"} <= set(signatures.signature_def)
    assert metadata.model_spec.version.value == 1
    # The specific policy serves version 1 only, though 2 is on disk.
    assert _status(models, "pinned") == [(1, "AVAILABLE")]

    errors = [
        (_predict_request("nope", x[:1]), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (_predict_request("pinned", x[:1], version=2), grpc.StatusCode.NOT_FOUND, "Specific(pinned, 2)"),
        (
            _predict_request("pinned", x[:1], label="canary"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: canary",
        ),
        (
            _predict_request("pinned", x[:1], alias="pixels"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input tensor alias not found in signature: pixels. Inputs expected to be in the set {images}.",
        ),
        (
            _predict_request("pinned", x[:1], signature="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (
            _predict_request("pinned", x[:1].astype(np.float64)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but double is provided",
        ),
        (
            _predict_request("pinned", np.zeros((1, 28, 28, 3), np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images must have shape",
        ),
    ]
    for request, code, message in errors:
        with pytest.raises(grpc.RpcError) as error:
            prediction.Predict(request, timeout=30)
        assert error.value.code() == code and message in error.value.details(), error.value.details()
    metadata_request.metadata_field[:] = ["bogus"]
    with pytest.raises(grpc.RpcError) as error:
        prediction.GetModelMetadata(metadata_request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "Metadata field bogus is not supported"


def _wait_for(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_new_versions_load_and_removed_ones_unload_while_serving(served, exports):
    server, latest = served
    network, x, _, staging = exports
    _, models = _stubs(server)
    rest = RestClient(server.url, "latest")
    assert _status(models, "latest") == [(1, "AVAILABLE")]
    base = rest.predict(x[:2])
    # A version appears (written elsewhere, then renamed in, as an export does): latest-1 serves it
    # within the 1 s poll and unloads version 1.
    shutil.copytree(os.path.join(staging, "2"), latest / ".incoming")
    os.rename(latest / ".incoming", latest / "2")
    assert _wait_for(lambda: _status(models, "latest") == [(2, "AVAILABLE"), (1, "END")]), _status(models, "latest")
    np.testing.assert_allclose(rest.predict(x[:2]), 2 * base, rtol=1e-5, atol=1e-5)
    with pytest.raises(ServerError, match=r"Specific\(latest, 1\)") as error:
        RestClient(server.url, "latest", version=1).predict(x[:1])
    assert error.value.status == 404
    # The newest version is deleted: version 1 is the latest again and is loaded back.
    shutil.rmtree(latest / "2")
    assert _wait_for(lambda: _status(models, "latest") == [(2, "END"), (1, "AVAILABLE")]), _status(models, "latest")
    np.testing.assert_allclose(rest.predict(x[:2]), base, rtol=1e-6)


def _raw(port, data, timeout=30):
    """Sends bytes, returns (status, parsed JSON body) of the first answer (a HEAD answer has no
    body: its Content-Type is checked instead)."""
    method = data.split(b" ", 1)[0].decode(errors="replace")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(data)
            connection.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before reading everything: read the answer
            pass
        answer = http.client.HTTPResponse(connection, method=method)
        answer.begin()
        assert answer.getheader("Content-Type") == "application/json", answer.getheaders()
        body = answer.read()
    return answer.status, ({"head": True} if method == "HEAD" else json.loads(body))


def _fuzz_requests(rng, image):
    paths = [
        "/v1/models/latest:predict",
        "/v1/models/latest",
        "/v1/models/latest/metadata",
        "/v1/models/latest:classify",
        "/v1/models//:predict",
        "/v1/models/%ff%fe:predict",
        "/v1/models/latest/versions/99999999999999999999999:predict",
        "/" + "a" * 5000,
        "/v1/models/latest/labels/%00:predict",
        "/v1/../../etc/passwd",
        "*",
        "/v1/models/latest?x=1",
    ]
    bodies = [
        b"",
        b"{",
        b"}",
        b"null",
        b"[]",
        b"\xff\xfe\x00",
        b'{"instances": ' + b"[" * 5000,
        b'{"instances": [' + b"1," * 10000 + b"1]}",
        json.dumps({"instances": [image] * 3}).encode(),
        json.dumps({"inputs": {"images": "x"}}).encode(),
        b'{"instances": [[[[1e999]]]]}',
        b'{"signature_name": {"a": 1}}',
        b'{"instances": [{"b64": "!!"}]}',
        b"\x00" * 100,
        json.dumps({"instances": [[[[0.5] * 3] * 32] * 31]}).encode(),
    ]
    methods = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"FOO", b"G E T", b""]
    requests = []
    for _ in range(300):
        method, path, body = rng.choice(methods), rng.choice(paths).encode(), rng.choice(bodies)
        kind = rng.randrange(6)
        if kind == 0:  # a wrong or unreadable Content-Length
            length = rng.choice([b"abc", b"-5", b"99999999999999999999", str(len(body) + 1).encode(), b""])
            headers = b"Content-Length: " + length + b"\r\n"
        elif kind == 1:  # chunked, sometimes malformed
            size = rng.choice([f"{len(body):x}".encode(), b"zz", b"-1"])
            headers = b"Transfer-Encoding: chunked\r\n"
            body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
        elif kind == 2:  # a broken header line
            headers = b"Content-Length " + str(len(body)).encode() + b"\r\nX: " + b"y" * 70000 + b"\r\n"
        elif kind == 3:  # a bad request line
            requests.append(method + b" " + path + b" HTTP/9.9\r\n\r\n")
            continue
        else:
            headers = b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        requests.append(
            method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n" + body
        )
    return requests


def test_no_request_crashes_the_server(served, exports):
    server, _ = served
    _, x, _, _ = exports
    rng = random.Random(0)
    answered = 0
    for data in _fuzz_requests(rng, x[0].tolist()):
        status, body = _raw(server.port, data)
        assert 200 <= status < 600 and isinstance(body, dict), (data[:200], status, body)
        if status >= 400 and "head" not in body:
            assert list(body) == ["error"] and isinstance(body["error"], str), (data[:200], body)
        answered += 1
    assert answered == 300
    # Still serving, over both APIs.
    assert RestClient(server.url, "pinned").predict(x[:2]).shape == (2, 10)
    assert GrpcClient(server.grpc, "pinned").predict(x[:2]).shape == (2, 10)
    # A body cut short gets an answer once the client gives up sending (HTTP/1.1 keeps reading).
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/v1/models/pinned:predict")
    connection.putheader("Content-Length", "100")
    connection.endheaders(b'{"instances"')
    connection.sock.shutdown(socket.SHUT_WR)
    answer = connection.getresponse()
    assert answer.status == 400 and "ended after 12 of 100 bytes" in json.loads(answer.read())["error"]


def test_rest_predict_status_and_error_format(served, exports):
    server, _ = served
    network, x, _, _ = exports
    client = RestClient(server.url, "pinned", max_batch=16)
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    logits = client.predict(x[:40])
    assert client.requests == 1 + 3 and client.queries == 40  # status, then 3 batches of <= 16
    np.testing.assert_allclose(logits, network(x[:40], training=False)["logits"].numpy(), atol=1e-4)
    with pytest.raises(ServerError, match="images must have shape") as error:
        client.predict(np.zeros((1, 28, 28, 3), np.float32))
    assert error.value.status == 400
    with pytest.raises(ServerError, match="pixel values above 1.0"):
        client.predict(np.full((1, 32, 32, 3), 2.0, np.float32))
    with pytest.raises(ServerError, match="signature name"):
        client.predict(x[:1], signature="nope")
    assert client.retried == 0  # 4xx answers are not retried


def test_clients_retry_only_what_may_succeed(exports, tmp_path):
    _, x, _, staging = exports
    base = tmp_path / "tiny"
    shutil.copytree(os.path.join(staging, "1"), base / "1")
    flaky = ModelServer(str(base), "--model_name=tiny", "--fail_first=4")
    slow = ModelServer(str(base), "--model_name=tiny", "--delay_s=1.5")
    try:
        # Predicts 1-2: REST gives up after its one retry, with the server's message.
        with pytest.raises(ServerError, match="Service temporarily unavailable"):
            RestClient(flaky.url, "tiny", max_retries=1, backoff=0.01).predict(x[:1])
        # Predicts 3-4 fail too; gRPC retries UNAVAILABLE and the 5th succeeds.
        grpc_client = GrpcClient(flaky.grpc, "tiny", backoff=0.05)
        assert grpc_client.predict(x[:3]).shape == (3, 10) and grpc_client.retried == 2
        for client in (RestClient(flaky.url, "tiny", version=7), GrpcClient(flaky.grpc, "tiny", version=7)):
            with pytest.raises(ServerError, match=r"Specific\(tiny, 7\)"):
                client.predict(x[:1])
            assert client.retried == 0  # a 4xx / NOT_FOUND answer is final
        # Timeouts are retried, then reported; a patient client gets the answer.
        for client in (
            RestClient(slow.url, "tiny", timeout=0.3, max_retries=1, backoff=0.01),
            GrpcClient(slow.grpc, "tiny", timeout=0.3, max_retries=1, backoff=0.01),
        ):
            with pytest.raises(ServerError, match="unreachable|DEADLINE_EXCEEDED"):
                client.predict(x[:1])
            assert client.retried == 1
        assert GrpcClient(slow.grpc, "tiny", timeout=10).predict(x[:1]).shape == (1, 10)
    finally:
        flaky.stop()
        slow.stop()


def test_serve_test_survives_a_dying_server_and_resumes_over_rest_and_grpc(served, exports, tmp_path):
    server, _ = served
    network, x, y, staging = exports
    local = SavedModelBackend(os.path.join(staging, "1"))
    x, y = x[:24], y[:24]
    base = tmp_path / "tiny"
    shutil.copytree(os.path.join(staging, "1"), base / "1")
    dying = ModelServer(str(base), "--model_name=tiny", "--die_after=4")
    try:
        target = RestClient(dying.url, "tiny", max_retries=1, backoff=0.01, max_batch=8)
        with pytest.raises(ServerError):
            robustness.run(
                target,
                local,
                x,
                y,
                str(tmp_path / "rest"),
                eps=2 / 255,
                pgd_steps=3,
                square_queries=10,
                chunk=8,
                log=lambda *_: None,
            )
        dying.process.wait(timeout=30)
        # The server is gone: a dropped or refused connection is retried at most --max_retries times.
        client = GrpcClient(dying.grpc, "tiny", max_retries=2, backoff=0.01, timeout=10)
        with pytest.raises(ServerError, match="after 3 attempts"):
            client.predict(x[:1])
        assert client.retried == 2
    finally:
        dying.stop()
    kept = [json.loads(line) for line in open(tmp_path / "rest" / "results.jsonl")]
    assert kept and all(r["stage"] == "clean" for r in kept)  # finished chunks survived the crash
    reports = {}
    for name, target in (
        ("rest", RestClient(server.url, "pinned", max_batch=8)),
        ("grpc", GrpcClient(server.grpc, "pinned", max_batch=8)),
    ):
        reports[name] = robustness.run(
            target,
            local,
            x,
            y,
            str(tmp_path / name),
            eps=2 / 255,
            pgd_steps=3,
            square_queries=10,
            chunk=8,
            log=lambda *_: None,
        )
    records = [json.loads(line) for line in open(tmp_path / "rest" / "results.jsonl")]
    keys = [(r["stage"], r["start"]) for r in records]
    assert len(keys) == len(set(keys)) == 9  # 3 stages x 3 chunks, nothing done twice
    report = reports["rest"]
    local_correct = np.argmax(network(x, training=False)["logits"].numpy(), -1) == y
    assert report["clean_accuracy_target"] == pytest.approx(local_correct.mean())
    assert report["prediction_agreement"] == 1.0 and report["max_logit_diff"] < 1e-4
    transfer = report["transfer"]
    # Adversarial examples made on the local copy fool the served model just as much.
    assert transfer["target_robust_accuracy"] == pytest.approx(transfer["local_robust_accuracy"])
    assert transfer["target_robust_accuracy"] < report["clean_accuracy_target"]
    assert transfer["uint8_max_linf"] <= 2 / 255 + 0.5 / 255 + 1e-6
    assert report["square"]["queries_total"] > 0 and report["latency_ms"]["p50"] > 0
    assert (tmp_path / "rest" / "serve_report.md").exists()
    # Over gRPC (TensorProto inputs) the same figures.
    for key in ("clean_accuracy_target", "prediction_agreement", "transfer"):
        assert reports["grpc"][key] == report[key], key
    assert reports["grpc"]["max_logit_diff"] < 1e-4


def test_flags_are_tensorflow_model_servers_and_bad_ones_are_named(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "robustcl.cli.model_server", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    config = tmp_path / "bad.config"
    config.write_text("model_config_list { config { name: 'a' base_path: 3 } }")
    cases = [
        (["--model_base_path=/nonexistent", "--model_name=m"], "base path /nonexistent is not a directory"),
        ([f"--model_config_file={config}"], "is not a ModelServerConfig text proto"),
        ([f"--model_config_file={config}", f"--model_base_path={tmp_path}"], "give one"),
        ([f"--model_base_path={tmp_path}", "--port=8500", "--rest_api_port=8500"], "need two ports"),
        ([], "--model_base_path (with --model_name) or --model_config_file"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr[-1000:])
    help_text = run("--helpfull").stdout
    for flag in (
        "--port",
        "--rest_api_port",
        "--model_name",
        "--model_base_path",
        "--model_config_file",
        "--file_system_poll_wait_seconds",
    ):
        assert flag in help_text
