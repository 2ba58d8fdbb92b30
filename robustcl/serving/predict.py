"""Predict, GetModelMetadata and GetModelStatus on the managed models: one implementation behind both
the REST and the gRPC API, with TF Serving's checks and messages (tensorflow_serving/servables/
tensorflow/predict_util.cc, get_model_metadata_impl.cc, model_servers/get_model_status_impl.cc).
"""

import numpy as np
import tensorflow as tf

from robustcl.serving.servables import DEFAULT_SIGNATURE, ServingError

SIGNATURE_DEF_FIELD = "signature_def"
# TensorFlow's DataTypeString names, which TF Serving's messages use (DT_FLOAT is "float").
_TYPE_NAMES = {tf.float32: "float", tf.float64: "double"}


def type_name(dtype):
    dtype = tf.dtypes.as_dtype(dtype)
    return _TYPE_NAMES.get(dtype, dtype.name)


def signature_def(servable, name):
    name = name or DEFAULT_SIGNATURE
    if name not in servable.signature_defs:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
    return name, servable.signature_defs[name]


def predict(manager, model_name, inputs, version=None, label=None, signature_name="", output_filter=()):
    """Runs a signature on {alias: NumPy array}. Returns (version, signature name, {alias: array})."""
    version, servable = manager.resolve(model_name, version, label)
    name, signature = signature_def(servable, signature_name)
    expected = sorted(signature.inputs)
    if len(inputs) != len(expected):
        sent = sorted(inputs)
        raise ServingError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(inputs)}!={len(expected)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). Sent extra: "
            f"{{{','.join(sorted(set(sent) - set(expected)))}}}. Missing but required: "
            f"{{{','.join(sorted(set(expected) - set(sent)))}}}.",
        )
    tensors = {}
    for position, (alias, value) in enumerate(sorted(inputs.items())):
        if alias not in signature.inputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input tensor alias not found in signature: {alias}. Inputs expected "
                f"to be in the set {{{','.join(expected)}}}.",
            )
        want = tf.dtypes.as_dtype(signature.inputs[alias].dtype)
        value = np.asarray(value)
        if tf.dtypes.as_dtype(value.dtype) != want:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expects arg[{position}] to be {type_name(want)} but {type_name(value.dtype)} is provided",
            )
        tensors[alias] = tf.constant(value)
    seen = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"output tensor alias not found in signature: {alias} Outputs expected "
                f"to be in the set {{{','.join(sorted(signature.outputs))}}}.",
            )
        if alias in seen:
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    function = servable.model.signatures[name]
    try:
        outputs = function(**tensors)
    except tf.errors.InvalidArgumentError as error:
        raise ServingError("INVALID_ARGUMENT", error.message) from None
    except (TypeError, ValueError) as error:  # the signature's own shape check, before running
        raise ServingError("INVALID_ARGUMENT", str(error).splitlines()[0]) from None
    wanted = seen or sorted(outputs)
    return version, name, {alias: outputs[alias].numpy() for alias in wanted}


def metadata(manager, model_name, version=None, label=None, fields=(SIGNATURE_DEF_FIELD,)):
    """GetModelMetadataResponse (signature_def only, as TF Serving)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not fields:
        raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
    version, servable = manager.resolve(model_name, version, label)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, definition in servable.signature_defs.items():
        signatures.signature_def[name].CopyFrom(definition)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = model_name
    response.model_spec.version.value = version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response


def status(manager, model_name, version=None):
    """GetModelStatusResponse: each version's state, newest first."""
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for number, state, error in manager.status(model_name, version):
        entry = response.model_version_status.add()
        entry.version = number
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        entry.status.SetInParent()  # error_code OK and an empty message, printed as TF Serving does
        if error:
            entry.status.error_code = 2  # UNKNOWN: the load failed
            entry.status.error_message = error
    return response
