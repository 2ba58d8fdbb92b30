"""A model server speaking TF Serving's REST API, over this project's SavedModel exports.

TF Serving itself cannot be installed on the development machines, so tests (and users without it)
run this instead; the client and `scripts/serve_test.py` talk to either the same way. It follows
TF Serving's api_rest.md for what the tests use:
  GET  /v1/models/NAME[/versions/V]              model status (GetModelStatusResponse as JSON)
  POST /v1/models/NAME[/versions/V]:predict      {"signature_name"?, "instances" | "inputs"}
       -> {"predictions": [...]} (row format) or {"outputs": ...} (columnar, for "inputs")
  errors: a non-200 status with {"error": "<message>"}
Versions are the numeric directories under --model_base_path; without /versions/V the highest is
used. For failure tests it can delay every predict, fail the first N with 503, or exit abruptly
after N predicts.

    python -m robustcl.serving.rest_server --model_base_path=EXPORT_DIR/NAME --model_name=NAME --port=8501
"""

import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?$")


class ModelStore:
    def __init__(self, name, base_path):
        self.name = name
        versions = sorted(int(d) for d in os.listdir(base_path) if d.isdigit())
        if not versions:
            raise FileNotFoundError(f"no numeric version directories under {base_path}")
        self.models = {v: tf.saved_model.load(os.path.join(base_path, str(v))) for v in versions}

    def get(self, version):
        version = max(self.models) if version is None else int(version)
        if version not in self.models:
            raise KeyError(f"Servable not found for request: Specific({self.name}, {version})")
        return version, self.models[version]


def _to_tensor(value, spec):
    try:
        return tf.constant(np.asarray(value, dtype=spec.dtype.as_numpy_dtype))
    except (ValueError, TypeError, OverflowError) as error:
        raise ValueError(f"Failed to process element: 0 of 'instances' list. Error: {error}") from None


def predict(model, body):
    signature_name = body.get("signature_name", "serving_default")
    if signature_name not in model.signatures:
        raise ValueError(f"Serving signature name: \"{signature_name}\" not found in signature def")
    function = model.signatures[signature_name]
    (input_name, spec), = function.structured_input_signature[1].items()
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("JSON Value: must have exactly one of \"instances\" or \"inputs\"")
    row_format = "instances" in body
    value = body["instances"] if row_format else body["inputs"]
    if isinstance(value, dict):
        value = value.get(input_name)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = [v.get(input_name) for v in value]
    outputs = function(**{input_name: _to_tensor(value, spec)})
    outputs = {k: v.numpy().tolist() for k, v in outputs.items()}
    if not row_format:
        return {"outputs": outputs if len(outputs) > 1 else next(iter(outputs.values()))}
    names = sorted(outputs)
    rows = len(outputs[names[0]])
    if len(names) == 1:
        return {"predictions": outputs[names[0]]}
    return {"predictions": [{n: outputs[n][i] for n in names} for i in range(rows)]}


def make_handler(store, delay_s=0.0, fail_first=0, die_after=0):
    state = {"predicts": 0, "lock": threading.Lock()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: tests start many requests
            pass

        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            match = _PATH.match(self.path)
            if not match or match["verb"] or match["name"] != store.name:
                return self._send(404, {"error": f"Could not find model for path {self.path}"})
            versions = [int(match["version"])] if match["version"] else sorted(store.models)
            if any(v not in store.models for v in versions):
                return self._send(404, {"error": f"Could not find version {match['version']}"})
            self._send(200, {"model_version_status": [
                {"version": str(v), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}} for v in versions]})

        def do_POST(self):
            match = _PATH.match(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not match or not match["verb"]:
                return self._send(404, {"error": f"Malformed request: POST {self.path}"})
            if match["name"] != store.name:
                return self._send(404, {"error": f"Servable not found for request: Latest({match['name']})"})
            with state["lock"]:
                state["predicts"] += 1
                count = state["predicts"]
            if die_after and count > die_after:
                os._exit(17)  # an abrupt crash: no response, connection dropped
            if delay_s:
                time.sleep(delay_s)
            if count <= fail_first:
                return self._send(503, {"error": "Service temporarily unavailable (injected)"})
            try:
                body = json.loads(raw or b"{}")
                version, model = store.get(match["version"])
                self._send(200, predict(model, body))
            except KeyError as error:
                self._send(404, {"error": str(error.args[0])})
            except (ValueError, json.JSONDecodeError) as error:
                self._send(400, {"error": str(error)})
            except tf.errors.InvalidArgumentError as error:
                self._send(400, {"error": error.message})

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--delay_s", type=float, default=0.0, help="sleep before every predict")
    parser.add_argument("--fail_first", type=int, default=0, help="answer the first N predicts 503")
    parser.add_argument("--die_after", type=int, default=0, help="exit abruptly at predict N+1")
    args = parser.parse_args(argv)
    store = ModelStore(args.model_name, args.model_base_path)
    server = ThreadingHTTPServer((args.host, args.port),
                                 make_handler(store, args.delay_s, args.fail_first, args.die_after))
    print(f"serving {args.model_name} versions {sorted(store.models)} on "
          f"http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
