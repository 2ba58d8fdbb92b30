"""Predicting through TF Serving's REST or gRPC API (or in process from a SavedModel), robustly.

RestClient and GrpcClient: batch requests within `max_batch` images, time out, retry what may be
retried (a dropped or refused connection, a timeout, REST 5xx / gRPC UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, ABORTED; predict is idempotent) at most `max_retries` times with exponential
backoff, and raise ServerError with the server's own message otherwise: a 4xx answer (or
INVALID_ARGUMENT, NOT_FOUND, ...) is never retried. Every backend counts the images sent (queries)
and times every request (latency). GrpcClient sends images as TensorProtos (no JSON).
"""

import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf


class ServerError(RuntimeError):
    def __init__(self, status, message, url):
        super().__init__(f"server answered {status} for {url}: {message}")
        self.status, self.message, self.url = status, message, url


class _Stats:
    def __init__(self):
        self.queries = 0  # images sent
        self.requests = 0  # answered requests
        self.retried = 0  # attempts repeated after a timeout, dropped connection or 5xx
        self.latencies = []  # seconds per answered request

    def latency_percentiles(self):
        if not self.latencies:
            return {}
        values = np.asarray(self.latencies) * 1000
        return {f"p{p}_ms": float(np.percentile(values, p)) for p in (50, 90, 99)}


class RestClient(_Stats):
    def __init__(self, server, model, version=None, timeout=30.0, max_retries=4, backoff=0.5,
                 max_batch=64):
        super().__init__()
        base = server.rstrip("/")
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
        self.status_url = base + path
        self.predict_url = base + path + ":predict"
        self.timeout, self.max_retries, self.backoff, self.max_batch = (
            timeout, max_retries, backoff, max_batch)

    def _request(self, url, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data,
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = json.loads(response.read())
                self.latencies.append(time.perf_counter() - start)
                self.requests += 1
                return body
            except urllib.error.HTTPError as error:
                try:
                    message = json.loads(error.read()).get("error", "")
                except (ValueError, AttributeError):
                    message = error.reason
                if error.code < 500 or attempt == self.max_retries:
                    raise ServerError(error.code, message, url) from None
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as error:
                if attempt == self.max_retries:
                    raise ServerError("unreachable", f"{error} after {attempt + 1} attempts", url) from None
            self.retried += 1
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("the loop returns or raises")

    def status(self):
        return self._request(self.status_url)

    def predict(self, images, signature="serving_default", output="logits"):
        images = np.asarray(images)
        parts = []
        for start in range(0, len(images), self.max_batch):
            batch = images[start:start + self.max_batch]
            body = self._request(self.predict_url, {"signature_name": signature,
                                                    "instances": batch.tolist()})
            predictions = body["predictions"]
            parts.append(np.asarray([p[output] if isinstance(p, dict) else p for p in predictions],
                                    np.float32))
            self.queries += len(batch)
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


class GrpcClient(_Stats):
    RETRIED = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")

    def __init__(self, address, model, version=None, timeout=30.0, max_retries=4, backoff=0.5,
                 max_batch=64):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        super().__init__()
        self.address, self.model, self.version = address, model, version
        self.timeout, self.max_retries, self.backoff, self.max_batch = (
            timeout, max_retries, backoff, max_batch)
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _spec(self, spec, signature=None):
        spec.name = self.model
        if self.version:
            spec.version.value = int(self.version)
        if signature:
            spec.signature_name = signature

    def _call(self, method, request, what):
        import grpc

        for attempt in range(self.max_retries + 1):
            start = time.perf_counter()
            try:
                response = method(request, timeout=self.timeout)
                self.latencies.append(time.perf_counter() - start)
                self.requests += 1
                return response
            except grpc.RpcError as error:
                code = error.code().name
                if code not in self.RETRIED:
                    raise ServerError(code, error.details(), f"{self.address} {what}") from None
                if attempt == self.max_retries:
                    raise ServerError(code, f"{error.details()} after {attempt + 1} attempts",
                                      f"{self.address} {what}") from None
            self.retried += 1
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("the loop returns or raises")

    def status(self):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self.models.GetModelStatus, request, "GetModelStatus")
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def predict(self, images, signature="serving_default", output="logits"):
        from tensorflow_serving.apis import predict_pb2

        images = np.asarray(images)
        parts = []
        for start in range(0, len(images), self.max_batch):
            batch = images[start:start + self.max_batch]
            request = predict_pb2.PredictRequest()
            self._spec(request.model_spec, signature)
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch))
            request.output_filter.append(output)
            response = self._call(self.prediction.Predict, request, "Predict")
            parts.append(tf.make_ndarray(response.outputs[output]).astype(np.float32))
            self.queries += len(batch)
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


class SavedModelBackend(_Stats):
    """The same interface, in process, on a SavedModel export; also differentiable (`logits_tf`)."""

    def __init__(self, path, max_batch=256):
        super().__init__()
        self.model = tf.saved_model.load(path)
        self.max_batch = max_batch

    def logits_tf(self, images):
        return self.model.signatures["logits"](images=images)["logits"]

    def predict(self, images, signature="serving_default", output="logits"):
        function = self.model.signatures[signature]
        parts = []
        for start in range(0, len(images), self.max_batch):
            batch = np.asarray(images[start:start + self.max_batch])
            began = time.perf_counter()
            parts.append(function(images=tf.constant(batch))[output].numpy())
            self.latencies.append(time.perf_counter() - began)
            self.requests += 1
            self.queries += len(batch)
        return np.concatenate(parts)
