"""TF Serving's REST behaviour, case by case: each row is a request and the answer TF Serving gives
(status, and the error text where its sources fix it), with the source it comes from
(tensorflow/serving at 9d981c5c; paths under tensorflow_serving/):
  handler_test   model_servers/http_rest_api_handler_test.cc
  handler        model_servers/http_rest_api_handler.cc
  util           model_servers/http_rest_api_util.cc (the path regexes, ParseModelInfo)
  http_server    model_servers/http_server.cc (ToHTTPStatusCode)
  json_tensor    util/json_tensor.cc (FillPredictRequestFromJson and its helpers)
  predict_util   servables/tensorflow/predict_util.cc
  manager        core/basic_manager.cc, model_servers/server_core.cc
  status_impl    model_servers/get_model_status_impl.cc
  classifier     servables/tensorflow/classifier.cc, regressor.cc
  api_rest       g3doc/api_rest.md
`rest_api.handle` is the server's whole REST logic without sockets; test_model_server.py sends
the same kind of requests over HTTP to the real process."""

import json

import numpy as np
import pytest
import tensorflow as tf

from robustcl.serving import rest_api
from robustcl.serving.export import export
from robustcl.serving.servables import ModelConfig, ModelManager

IMAGE = np.full((32, 32, 3), 0.5, np.float32).tolist()
IMAGE_UINT8 = np.full((32, 32, 3), 128, np.uint8).tolist()


@pytest.fixture(scope="module")
def manager(undefended, tmp_path_factory):
    network, _, _ = undefended
    root = str(tmp_path_factory.mktemp("rest") / "models")
    for _ in range(2):
        export(network, (32, 32, 3), root, "tiny")
    manager = ModelManager(
        [ModelConfig("tiny", f"{root}/tiny", policy="all", labels=(("stable", 1),))],
        poll_wait_seconds=-1,
        log=lambda *a: None,
    )
    manager.start()
    return manager


def _body(value):
    return value if isinstance(value, bytes) else json.dumps(value).encode()


P = "/v1/models/tiny:predict"
# (method, path, body, status, text the error contains, source)
ERROR_CASES = [
    ("GET", "/v1/foo", b"", 400, "Malformed request: GET /v1/foo", "handler_test UnsupportedApiCalls"),
    ("POST", "/v1/foo", b"", 400, "Malformed request", "handler_test UnsupportedApiCalls"),
    ("GET", "/v1/models", b"", 400, "Missing model name in request.", "handler_test UnsupportedApiCalls"),
    ("GET", "/v1/models/debug/model_name", b"", 400, "Malformed request", "handler_test"),
    ("POST", "/v1/models", b"", 400, "Malformed request", "handler_test UnsupportedApiCalls"),
    ("GET", "/v1/models/foo:predict", b"", 400, "Malformed request", "handler_test UnsupportedApiCalls"),
    ("GET", "/v1/models/foo/version/50:predict", b"", 400, "Malformed request", "handler_test"),
    ("POST", "/v1/models/foo/version/50:regress", b"", 400, "Malformed request", "handler_test"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", b"", 400, "Malformed request", "handler_test"),
    (
        "POST",
        "/v1/models/foo/versions/18446744073709551615:regress",
        b"",
        400,
        "Failed to convert version: 18446744073709551615 to numeric.",
        "handler_test",
    ),
    ("POST", "/v1/models/foo/metadata", b"", 400, "Malformed request", "handler_test"),
    ("POST", "/v1/models/foo/label/some_label:regress", b"", 400, "Malformed request", "handler_test"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", b"", 400, "Malformed request", "handler_test"),
    ("POST", "/v1/models/foo/versions/some_label:regress", b"", 400, "Malformed request", "handler_test"),
    ("PUT", "/v1/models/tiny", b"", 400, "Malformed request: PUT /v1/models/tiny", "handler ProcessRequest"),
    ("DELETE", P, b"", 400, "Malformed request: DELETE", "handler ProcessRequest"),
    ("GET", "/statuspage", b"", 404, "", "handler_test kPathRegex: only /v1/.* reaches the handler"),
    # Models and versions that are not there (NOT_FOUND -> 404).
    (
        "POST",
        "/v1/models/foo:predict",
        {"instances": [1]},
        404,
        "Servable not found for request: Latest(foo)",
        "handler_test PredictModelNameVersionErrors",
    ),
    (
        "POST",
        "/v1/models/foo/versions/50:predict",
        {"instances": [1]},
        404,
        "Servable not found for request: Specific(foo, 50)",
        "handler_test, manager",
    ),
    (
        "POST",
        "/v1/models/tiny/versions/99:predict",
        {"instances": [1]},
        404,
        "Servable not found for request: Specific(tiny, 99)",
        "handler_test PredictModelNameVersionErrors",
    ),
    (
        "POST",
        "/v1/models/tiny/labels/nonexistent:predict",
        {"instances": ["x", "y"]},
        400,
        "Unrecognized servable version label: nonexistent",
        "handler_test PredictRequestErrors",
    ),
    ("GET", "/v1/models/nope", b"", 404, "Could not find any versions of model nope", "status_impl"),
    ("GET", "/v1/models/tiny/versions/7", b"", 404, "Could not find version 7 of model tiny", "status_impl"),
    (
        "GET",
        "/v1/models/nope/metadata",
        b"",
        404,
        "Servable not found for request: Latest(nope)",
        "handler ProcessModelMetadataRequest, manager",
    ),
    # Bodies.
    ("POST", P, b"", 400, "JSON Parse error: The document is empty", "handler_test PredictRequestErrors"),
    ("POST", P, b"instances = [1, 2]", 400, "JSON Parse error: Invalid value", "handler_test PredictRequestErrors"),
    ("POST", P, {"instances": ["x", "y"]}, 400, "not of expected type: float", "handler_test PredictRequestErrors"),
    (
        "POST",
        P,
        {"signature_name": 100},
        400,
        "'signature_name' key must be a string value.",
        "handler_test PredictRequestErrors",
    ),
    (
        "POST",
        P,
        {"signature_name": [], "instances": [IMAGE]},
        400,
        "'signature_name' key must be a string value.",
        "json_tensor FillSignature",
    ),
    ("POST", P, [1, 2], 400, "JSON Value: [1,2] Is not object", "json_tensor ParseJson"),
    ("POST", P, "text", 400, 'JSON Value: "text" Is not object', "json_tensor ParseJson"),
    ("POST", P, b"[" * 100_000 + b"]" * 100_000, 400, "JSON Parse error", "json_tensor ParseJson"),
    ("POST", P, b'{"instances": [1]} trailing', 400, "", "json_tensor ParseJson (kParseStopWhenDoneFlag)"),
    (
        "POST",
        P,
        {"signature_name": "nope", "instances": [IMAGE]},
        400,
        'Serving signature name: "nope" not found in signature def',
        "handler GetInfoMap",
    ),
    (
        "POST",
        P,
        {"instances": {"images": [IMAGE]}},
        400,
        "Expecting 'instances' to be an list/array",
        "json_tensor FillPredictRequestFromJson",
    ),
    ("POST", P, {"instances": []}, 400, "No values in 'instances' array", "json_tensor"),
    (
        "POST",
        P,
        {"instances": [IMAGE], "inputs": [IMAGE]},
        400,
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
        "json_tensor",
    ),
    ("POST", P, {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key", "json_tensor"),
    (
        "POST",
        P,
        {"instances": [{"images": IMAGE, "extra": 1}]},
        400,
        "Failed to process element: 0 key: extra of 'instances' list. Error: INVALID_ARGUMENT: JSON "
        "object: does not have named input: extra",
        "json_tensor FillTensorMapFromInstancesList",
    ),
    (
        "POST",
        P,
        {"instances": [IMAGE, {"images": IMAGE}]},
        400,
        "Expecting value/list but got object at item 1 of input list",
        "json_tensor",
    ),
    (
        "POST",
        P,
        {"instances": [{"images": IMAGE}, IMAGE]},
        400,
        "Expecting object but got list at item 1 of input list",
        "json_tensor",
    ),
    (
        "POST",
        P,
        {"instances": [IMAGE, IMAGE[:16]]},
        400,
        "Expecting tensor size: 3072 but got: 1536",
        "json_tensor AddInstanceItem",
    ),
    (
        "POST",
        P,
        {"instances": [[[0.1], [0.1, 0.2]]]},
        400,
        "Encountered list at unexpected size: 2 at level: 1 expected size: 1",
        "json_tensor FillTensorProto",
    ),
    (
        "POST",
        P,
        {"instances": [[[[True] * 3] * 32] * 32]},
        400,
        "JSON Value: true Type: True is not of expected type: float",
        "json_tensor AddValueToTensor",
    ),
    (
        "POST",
        P,
        {"instances": [[[[None] * 3] * 32] * 32]},
        400,
        "Type: Null is not of expected type: float",
        "json_tensor AddValueToTensor",
    ),
    (
        "POST",
        P,
        {"signature_name": "serving_uint8", "instances": [IMAGE]},
        400,
        "JSON Value: 0.5 Type: Number is not of expected type: uint8",
        "json_tensor AddValueToTensor",
    ),
    (
        "POST",
        P,
        {"inputs": {"other": [IMAGE]}},
        400,
        "Missing named input: images in 'inputs' object.",
        "json_tensor FillTensorMapFromInputsMap",
    ),
    ("POST", P, {"instances": [1]}, 400, "images must have rank 4", "predict_util (the export's checks)"),
    (
        "POST",
        P,
        b'{"instances": [[[[NaN, 0.5, 0.5]]]]}',
        400,
        "",
        "json_tensor ParseJson takes NaN (kParseNanAndInfFlag); the export refuses it",
    ),
    # classify and regress on predict signatures.
    (
        "POST",
        "/v1/models/tiny:classify",
        {},
        400,
        "When method is classify, key 'examples' is expected and was not found",
        "json_tensor",
    ),
    ("POST", "/v1/models/tiny:classify", {"examples": []}, 400, "'examples' value is an empty array", "json_tensor"),
    (
        "POST",
        "/v1/models/tiny:classify",
        {"examples": [{"x": 1}]},
        400,
        "No classification inputs found in SignatureDef",
        "classifier PreProcessClassification",
    ),
    (
        "POST",
        "/v1/models/tiny:regress",
        {"examples": [{"x": 1}]},
        400,
        "Expected one output Tensor.",
        "classifier (regressor.cc) PreProcessRegression",
    ),
    (
        "POST",
        "/v1/models/tiny:regress",
        {"signature_name": "nope", "examples": [{}]},
        400,
        "No signature was found with the name: nope",
        "classifier GetRegressionSignatureDef",
    ),
]


@pytest.mark.parametrize(
    "method,path,body,status,message,source",
    ERROR_CASES,
    ids=[f"{c[0]} {c[1][:40]} {c[5].split()[0]}-{i}" for i, c in enumerate(ERROR_CASES)],
)
def test_errors_are_tf_servings(manager, method, path, body, status, message, source):
    got_status, answer = rest_api.handle(manager, method, path, _body(body))
    assert (got_status, list(answer)) == (status, ["error"]), (source, answer)
    assert isinstance(answer["error"], str) and message in answer["error"], (source, answer["error"])


def _predict(manager, path, body):
    status, answer = rest_api.handle(manager, "POST", path, _body(body))
    assert status == 200, answer
    return answer


def test_row_and_columnar_predictions_are_the_models(manager, undefended):
    network, x, _ = undefended
    images = x[:3]
    logits = network(images, training=False)["logits"].numpy()
    probabilities = tf.nn.softmax(logits).numpy()
    # api_rest: row format, several outputs -> a list of objects, one per instance.
    rows = _predict(manager, P, {"instances": images.tolist()})["predictions"]
    assert [sorted(r) for r in rows] == [["logits", "probabilities"]] * 3
    np.testing.assert_allclose([r["logits"] for r in rows], logits, rtol=1e-5, atol=1e-5)
    # Named instances give the same.
    named = _predict(manager, P, {"instances": [{"images": i} for i in images.tolist()]})["predictions"]
    np.testing.assert_allclose([r["probabilities"] for r in named], probabilities, rtol=1e-5, atol=1e-6)
    # api_rest: columnar -> {"outputs": {name: batch}}; one output -> its value alone.
    columns = _predict(manager, P, {"inputs": images.tolist()})["outputs"]
    np.testing.assert_allclose(columns["logits"], logits, rtol=1e-5, atol=1e-5)
    alone = _predict(manager, P, {"signature_name": "logits", "inputs": {"images": images.tolist()}})
    np.testing.assert_allclose(alone["outputs"], logits, rtol=1e-5, atol=1e-5)
    single = _predict(manager, P, {"signature_name": "logits", "instances": images.tolist()})
    np.testing.assert_allclose(single["predictions"], logits, rtol=1e-5, atol=1e-5)
    # uint8 signature takes integers; versions, labels, case-insensitive and escaped paths.
    quantized = np.round(images * 255).astype(np.uint8)
    as_uint8 = _predict(manager, P, {"signature_name": "serving_uint8", "instances": quantized.tolist()})
    np.testing.assert_allclose(
        [r["logits"] for r in as_uint8["predictions"]], network(quantized / 255.0, training=False)["logits"], atol=1e-4
    )
    for path in (
        "/v1/models/tiny/versions/1:predict",
        "/v1/models/tiny/labels/stable:predict",
        "/V1/MODELS/tiny:PREDICT",
        "/v1/models/ti%6Ey:predict",
    ):
        again = _predict(manager, path, {"instances": images[:1].tolist()})["predictions"]
        np.testing.assert_allclose(again[0]["logits"], logits[0], rtol=1e-5, atol=1e-5)


def test_status_and_metadata_are_tf_servings(manager):
    # handler_test GetStatus: the GetModelStatusResponse as JSON, newest version first.
    status, answer = rest_api.handle(manager, "GET", "/v1/models/tiny")
    ok = {"error_code": "OK", "error_message": ""}
    assert (status, answer) == (
        200,
        {
            "model_version_status": [
                {"version": "2", "state": "AVAILABLE", "status": ok},
                {"version": "1", "state": "AVAILABLE", "status": ok},
            ]
        },
    )
    assert rest_api.handle(manager, "GET", "/v1/models/tiny/versions/1")[1] == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]
    }
    # handler_test GetModelMetadata: model_spec and the SignatureDefMap, proto field names kept.
    for path, version in (
        ("/v1/models/tiny/metadata", "2"),
        ("/v1/models/tiny/versions/1/metadata", "1"),
        ("/v1/models/tiny/labels/stable/metadata", "1"),
    ):
        status, answer = rest_api.handle(manager, "GET", path)
        assert status == 200, answer
        assert answer["model_spec"] == {"name": "tiny", "signature_name": "", "version": version}
        signatures = answer["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "serving_uint8", "logits"} <= set(signatures)
        default = signatures["serving_default"]
        assert default["method_name"] == "tensorflow/serving/predict"
        assert default["inputs"]["images"]["dtype"] == "DT_FLOAT"
        assert signatures["serving_uint8"]["inputs"]["images"]["dtype"] == "DT_UINT8"
        assert set(default["outputs"]) == {"logits", "probabilities"}


def test_json_values_follow_rapidjson():
    assert rest_api.debug_string({"a": [1, 2.5, None]}) == '{"a":[1,2.5,null]}'
    assert len(rest_api.debug_string(list(range(1000))).encode()) == rest_api.MAX_DEBUG_BYTES
    array = rest_api.to_array([[1, 2], [3, 4]], tf.float32)
    assert array.dtype == np.float32 and array.shape == (2, 2)
    assert rest_api.to_array(7, tf.int32).shape == ()
    np.testing.assert_array_equal(rest_api.to_array([300, -1], tf.uint8), [44, 255])  # wraps as TF
    assert rest_api.to_array([{"b64": "aGk="}], tf.string).tolist() == [b"hi"]
    assert rest_api.predict_response({"s": np.array([b"hi", b"\xff"], object)}, True) == {
        "predictions": ["hi", {"b64": "/w=="}]
    }
