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


class _Retryable(Exception):
    """One attempt failed in a way that may be retried (the answer's status and message)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class _RemoteClient(_Stats):
    """What the REST and gRPC clients share: requests of at most `max_batch` images, each retried
    with exponential backoff at most `max_retries` times when `_attempt` says it may be."""

    def __init__(self, timeout, max_retries, backoff, max_batch):
        super().__init__()
        self.timeout, self.max_retries, self.backoff, self.max_batch = timeout, max_retries, backoff, max_batch

    def _retrying(self, attempt_once, where):
        """attempt_once() returns the answer, raises _Retryable, or raises ServerError (final)."""
        for attempt in range(self.max_retries + 1):
            start = time.perf_counter()
            try:
                answer = attempt_once()
            except _Retryable as error:
                if attempt == self.max_retries:
                    raise ServerError(error.status, f"{error.message} after {attempt + 1} attempts", where) from None
                self.retried += 1
                time.sleep(self.backoff * 2**attempt)
                continue
            self.latencies.append(time.perf_counter() - start)
            self.requests += 1
            return answer
        raise AssertionError("the loop returns or raises")

    def predict(self, images, signature="serving_default", output="logits"):
        images = np.asarray(images)
        parts = []
        for start in range(0, len(images), self.max_batch):
            batch = images[start : start + self.max_batch]
            parts.append(self._predict_batch(batch, signature, output))
            self.queries += len(batch)
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _predict_batch(self, batch, signature, output):
        raise NotImplementedError


class RestClient(_RemoteClient):
    def __init__(self, server, model, version=None, timeout=30.0, max_retries=4, backoff=0.5, max_batch=64):
        super().__init__(timeout, max_retries, backoff, max_batch)
        base = server.rstrip("/")
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
        self.status_url = base + path
        self.predict_url = base + path + ":predict"

    def _request(self, url, payload=None):
        data = None if payload is None else json.dumps(payload).encode()

        def attempt():
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                try:
                    message = json.loads(error.read()).get("error", "")
                except (ValueError, AttributeError):
                    message = error.reason
                if error.code < 500:
                    raise ServerError(error.code, message, url) from None
                raise _Retryable(error.code, message) from None
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as error:
                raise _Retryable("unreachable", str(error)) from None

        return self._retrying(attempt, url)

    def status(self):
        return self._request(self.status_url)

    def _predict_batch(self, batch, signature, output):
        body = self._request(self.predict_url, {"signature_name": signature, "instances": batch.tolist()})
        return np.asarray([p[output] if isinstance(p, dict) else p for p in body["predictions"]], np.float32)


class GrpcClient(_RemoteClient):
    RETRIED = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")

    def __init__(self, address, model, version=None, timeout=30.0, max_retries=4, backoff=0.5, max_batch=64):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        super().__init__(timeout, max_retries, backoff, max_batch)
        self.address, self.model, self.version = address, model, version
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

        def attempt():
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                code = error.code().name
                if code not in self.RETRIED:
                    raise ServerError(code, error.details(), f"{self.address} {what}") from None
                raise _Retryable(code, error.details()) from None

        return self._retrying(attempt, f"{self.address} {what}")

    def status(self):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self.models.GetModelStatus, request, "GetModelStatus")
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def _predict_batch(self, batch, signature, output):
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature)
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch))
        request.output_filter.append(output)
        response = self._call(self.prediction.Predict, request, "Predict")
        return tf.make_ndarray(response.outputs[output]).astype(np.float32)


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
            batch = np.asarray(images[start : start + self.max_batch])
            began = time.perf_counter()
            parts.append(function(images=tf.constant(batch))[output].numpy())
            self.latencies.append(time.perf_counter() - began)
            self.requests += 1
            self.queries += len(batch)
        return np.concatenate(parts)
