"""TF Serving's gRPC API from the tensorflow-serving-api package's protos:
PredictionService.Predict and GetModelMetadata, ModelService.GetModelStatus. The other methods of
those services answer UNIMPLEMENTED (this stand-in serves predict signatures only).

Outputs are written as TF Serving writes them by default (Tensor::AsProtoField: typed repeated
fields such as float_val, not tensor_content); inputs may come either way (tf.make_tensor_proto
writes tensor_content).
"""

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from robustcl.serving import predict as core
from robustcl.serving.servables import ServingError
from concurrent import futures

_FIELDS = {
    tf.float32: "float_val",
    tf.float64: "double_val",
    tf.int32: "int_val",
    tf.int16: "int_val",
    tf.int8: "int_val",
    tf.uint8: "int_val",
    tf.int64: "int64_val",
    tf.bool: "bool_val",
    tf.string: "string_val",
    tf.uint32: "uint32_val",
    tf.uint64: "uint64_val",
}


def as_proto_field(array):
    """A TensorProto with the values in its typed field (what TF Serving's AsProtoField writes)."""
    array = np.asarray(array)
    dtype = tf.dtypes.as_dtype(array.dtype if array.dtype != object else tf.string)
    field = _FIELDS.get(dtype)
    if field is None:  # half, bfloat16 and the rest: tensor_content is exact for them
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def _model_spec(spec):
    """(name, version, label) of a request's ModelSpec."""
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _abort(context, error):
    context.abort(getattr(grpc.StatusCode, error.code), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, before_predict=None):
        self.manager = manager
        self.before_predict = before_predict  # failure injection of the stand-in's test flags

    def Predict(self, request, context):
        if self.before_predict is not None:
            injected = self.before_predict()
            if injected is not None:
                context.abort(grpc.StatusCode.UNAVAILABLE, injected)
        try:
            if not request.HasField("model_spec"):
                raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
            name, version, label = _model_spec(request.model_spec)
            inputs = {}
            for alias, proto in request.inputs.items():
                try:
                    inputs[alias] = tf.make_ndarray(proto)
                except (TypeError, ValueError):
                    raise ServingError("INVALID_ARGUMENT", f"tensor parsing error: {alias}") from None
            version, signature, outputs = core.predict(
                self.manager,
                name,
                inputs,
                version,
                label,
                request.model_spec.signature_name,
                tuple(request.output_filter),
            )
        except ServingError as error:
            _abort(context, error)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(as_proto_field(array))
        return response

    def GetModelMetadata(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
            name, version, label = _model_spec(request.model_spec)
            return core.metadata(self.manager, name, version, label, tuple(request.metadata_field))
        except ServingError as error:
            _abort(context, error)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
            name, version, _ = _model_spec(request.model_spec)
            return core.status(self.manager, name, version)
        except ServingError as error:
            _abort(context, error)


def serve(manager, host, port, before_predict=None, max_workers=8):
    """A started grpc.Server on host:port with both services."""
    # TF Serving's default message limit is INT_MAX; grpc's Python default (4 MiB) would refuse
    # batches of images that the real server takes.
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, before_predict), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    server.start()
    return server
