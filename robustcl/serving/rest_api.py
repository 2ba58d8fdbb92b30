"""TF Serving's REST API: paths, JSON <-> tensors, status codes and error bodies, as
tensorflow_serving/model_servers/http_rest_api_handler.cc, http_rest_api_util.cc, http_server.cc
and util/json_tensor.cc do them (g3doc/api_rest.md describes them).

    GET  /v1/models/NAME[/versions/N | /labels/L]             GetModelStatus as JSON
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata    signature_def as JSON
    POST /v1/models/NAME[/versions/N | /labels/L]:predict     {"signature_name"?, "instances"|"inputs"}
    POST ...:classify | :regress                              checked as TF Serving checks them

Every answer is JSON; an error is {"error": "<message>"} with the HTTP status TF Serving maps its
status code to. `handle(method, path, body)` is pure (no sockets), so every case can be tested
table by table; model_server.py puts it behind HTTP.

Why one file over 450 lines: it follows the reference's handler and JSON utilities case by case
(one function per behaviour, in their order), so a reader checks it against those files side by
side; split, that correspondence would be lost.
"""

import base64
import json
import re
import urllib.parse

import numpy as np
import tensorflow as tf

from robustcl.serving import predict as core
from robustcl.serving.servables import ServingError

# http_rest_api_util.cc (the first is spelled "Gegex" there).
PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.IGNORECASE,
)
HANDLED_PATH = re.compile(r"/v1/.*", re.IGNORECASE)

# http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

MAX_DEBUG_BYTES = 256  # json_tensor.cc kMaxJsonDebugStringBytes


def _invalid(message):
    return ServingError("INVALID_ARGUMENT", message)


def debug_string(value):
    """rapidjson's compact writer, cut at 256 bytes, as TF Serving quotes values in its errors."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return text.encode()[:MAX_DEBUG_BYTES].decode(errors="ignore")


def json_type(value):
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def parse_json(body):
    """The request document, which must be an object (json_tensor.cc ParseJson)."""
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _invalid(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    try:
        # rapidjson takes NaN and Infinity (kParseNanAndInfFlag) and stops after the first value.
        document, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except json.JSONDecodeError as error:
        raise _invalid(f"JSON Parse error: Invalid value. at offset: {error.pos} ({error.msg})") from None
    except RecursionError:  # nesting deeper than any tensor's rank (Python's recursion limit)
        raise _invalid("JSON Parse error: nesting too deep") from None
    if not isinstance(document, dict):
        raise _invalid(f"JSON Value: {debug_string(document)} Is not object")
    return document


def _signature_name(document):
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise _invalid(
            f"JSON Value: {debug_string(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def _is_base64(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _scalar(value, dtype):
    """One JSON leaf as the signature's dtype would take it (json_tensor.cc AddValueToTensor)."""
    name = core.type_name(dtype)
    if isinstance(value, dict):
        if dtype == tf.string:
            if not _is_base64(value):
                raise _invalid(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise _invalid("Unable to base64 decode") from None
    elif dtype in (tf.float32, tf.float64, tf.float16, tf.bfloat16):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float: rapidjson's GetFloat gives inf
                return float("inf") if value > 0 else float("-inf")
    elif dtype in (tf.int8, tf.int16, tf.int32, tf.uint8):
        if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
            return value
    elif dtype == tf.int64:
        if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
            return value
    elif dtype in (tf.uint32, tf.uint64):
        bits = 32 if dtype == tf.uint32 else 64
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**bits:
            return value
    elif dtype == tf.bool:
        if isinstance(value, bool):
            return value
    elif dtype == tf.string:
        if isinstance(value, str):
            return value.encode()
    else:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {debug_string(value)} to type: {name}")
    raise _invalid(f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: {name}")


def _fill(value, shape, level, dtype, out):
    """Checks a dense nested list against its shape (json_tensor.cc FillTensorProto)."""
    if not isinstance(value, list):
        if level != len(shape):
            raise _invalid(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in "
                f"the JSON DOM. Expected at level: {len(shape)}"
            )
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise _invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise _invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, shape, level + 1, dtype, out)


_FAST_KINDS = {
    tf.float32: (float, int),
    tf.float64: (float, int),
    tf.float16: (float, int),
    tf.bfloat16: (float, int),
    tf.int32: (int,),
    tf.int16: (int,),
    tf.int8: (int,),
    tf.uint8: (int,),
    tf.int64: (int,),
    tf.bool: (bool,),
}


def _dense(value, shape, dtype):
    """The array, when `value` is a dense nest of leaves of the kinds the dtype takes (the common
    case, converted at C speed); None otherwise, so the exact checks below find the error."""
    kinds = _FAST_KINDS.get(dtype)
    if kinds is None or not shape:
        return None
    try:
        leaves = np.array(value, dtype=object)
    except ValueError:
        return None
    if leaves.shape != tuple(shape):
        return None
    flat = leaves.ravel().tolist()
    if not set(map(type, flat)) <= set(kinds):  # bool is not int here: type(True) is bool
        return None
    bound = 2**63 if dtype == tf.int64 else 2**31  # what rapidjson's IsInt64 / IsInt accept
    if dtype.is_integer and flat and not -bound <= min(flat) <= max(flat) < bound:
        return None
    try:
        return (
            np.array(flat, dtype=np.float64 if dtype.is_floating else None).astype(dtype.as_numpy_dtype).reshape(shape)
        )
    except (OverflowError, ValueError):
        return None


def to_array(value, dtype):
    """A JSON value (list nest or scalar) as a NumPy array of the signature's dtype."""
    dtype = tf.dtypes.as_dtype(dtype)
    shape = _shape(value)
    fast = _dense(value, shape, dtype)
    if fast is not None:
        return fast
    values = []
    _fill(value, shape, 0, dtype, values)
    if dtype == tf.string:
        return np.array(values, dtype=object).reshape(shape)
    # Integers outside the dtype's range wrap as TensorFlow's proto conversion does.
    return (
        np.array(values).astype(dtype.as_numpy_dtype).reshape(shape)
        if values
        else np.zeros(shape, dtype.as_numpy_dtype)
    )


def _instances(instances, input_infos):
    """{alias: array} from the row format (json_tensor.cc FillTensorMapFromInstancesList)."""
    first = instances[0]
    names = sorted(input_infos)
    if not isinstance(first, dict) and len(input_infos) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = isinstance(first, dict) and not _is_base64(first)
    rows = {name: [] for name in names}
    shapes = {}

    def add(item, name, prefix):
        if name not in input_infos:
            raise _invalid(f"{prefix}JSON object: does not have named input: {name}")
        try:
            array = to_array(item, input_infos[name])
        except ServingError as error:
            raise _invalid(f"{prefix}{error.message}") from None
        if name in shapes and shapes[name] != array.shape:
            size = int(np.prod(shapes[name]))
            if size != array.size:
                raise _invalid(f"{prefix}Expecting tensor size: {size} but got: {array.size}")
            raise _invalid(
                f"{prefix}Expecting shape [{','.join(map(str, shapes[name]))}] but got: "
                f"[{','.join(map(str, array.shape))}]"
            )
        shapes[name] = array.shape
        rows[name].append(array)

    for index, element in enumerate(instances):
        element_is_object = isinstance(element, dict) and not _is_base64(element)
        if objects:
            if not element_is_object:
                raise _invalid(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                add(
                    item,
                    name,
                    f"Failed to process element: {index} key: {name} of 'instances' list. Error: INVALID_ARGUMENT: ",
                )
            if set(element) != set(names):
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(names)}"
                )
        else:
            if element_is_object:
                raise _invalid(f"Expecting value/list but got object at item {index} of input list")
            add(element, names[0], f"Failed to process element: {index} of 'instances' list. Error: INVALID_ARGUMENT: ")
    return {name: np.stack(arrays) for name, arrays in rows.items() if arrays}


def _inputs(value, input_infos):
    """{alias: array} from the columnar format (json_tensor.cc FillTensorMapFromInputsMap)."""
    if not isinstance(value, dict) or _is_base64(value):
        if len(input_infos) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, dtype),) = input_infos.items()
        return {name: to_array(value, dtype)}
    arrays = {}
    for name in sorted(input_infos):
        if name not in value:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], input_infos[name])
    return arrays


def predict_request(document, input_infos):
    """({alias: array}, row format?) from a predict document (json_tensor.cc FillPredictRequestFromJson)."""
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise _invalid(
            f"JSON Value: {debug_string(document)} Not formatted correctly expecting only "
            "one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {debug_string(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise _invalid(f"JSON Value: {debug_string(document)} No values in 'instances' array")
        return _instances(instances, input_infos), True
    if has_inputs:
        return _inputs(document["inputs"], input_infos), False
    raise _invalid("Missing 'inputs' or 'instances' key")


def _json_values(array):
    if array.dtype == object:  # strings: text when it decodes, else {"b64": ...} (as TF Serving)

        def convert(item):
            if isinstance(item, bytes):
                try:
                    return item.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(item).decode()}
            return [convert(i) for i in item]

        return convert(array.tolist())
    return array.tolist()


def predict_response(outputs, row_format):
    """The answer's JSON (json_tensor.cc MakeRowFormatJsonFromTensors / MakeColumnarFormat...)."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _json_values(next(iter(outputs.values())))}
        return {"outputs": {name: _json_values(value) for name, value in outputs.items()}}
    batch = None
    for name, value in outputs.items():
        if value.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and value.shape[0] != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {value.shape[0]} expecting: {batch}")
        batch = value.shape[0]
    columns = {name: _json_values(value) for name, value in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{name: columns[name][i] for name in columns} for i in range(batch)]}


def _classify_or_regress(manager, method, name, version, label, body):
    """TF Serving's checks, in its order, for :classify and :regress; this server runs predict
    signatures only, so a signature that passes them is refused as unimplemented."""
    from google.protobuf import text_format

    document = parse_json(body)
    signature_name = _signature_name(document) or "serving_default"
    examples = document.get("examples")
    if "examples" not in document:
        raise _invalid(
            f"JSON Value: {debug_string(document)} When method is classify, key 'examples' "
            "is expected and was not found"
        )
    if not isinstance(examples, list):
        raise _invalid(f"JSON Value: {debug_string(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise _invalid(f"JSON Value: {debug_string(document)} 'examples' value is an empty array")
    for example in examples:
        if not isinstance(example, dict):
            raise _invalid(f"Example must be JSON object but got JSON {json_type(example)}")
    _, servable = manager.resolve(name, version, label)
    if signature_name not in servable.signature_defs:
        raise _invalid(f"No signature was found with the name: {signature_name}")
    signature = servable.signature_defs[signature_name]
    text = text_format.MessageToString(signature)
    if len(signature.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if method == "classify":
        if len(signature.outputs) not in (1, 2):
            raise _invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if "inputs" not in signature.inputs:
            raise _invalid(f"No classification inputs found in SignatureDef: {text}")
        if not {"classes", "scores"} & set(signature.outputs):
            raise _invalid(
                "Expected classification signature outputs to contain at least one of "
                f'"classes" or "scores". Signature was: {text}'
            )
    else:
        if len(signature.outputs) != 1:
            raise _invalid("Expected one output Tensor.")
        if "inputs" not in signature.inputs:
            raise _invalid(f"No regression inputs found in SignatureDef: {text}")
        if "outputs" not in signature.outputs:
            raise _invalid(f"No regression outputs found in SignatureDef: {text}")
    raise ServingError(
        "UNIMPLEMENTED",
        f"{method} is not served by robustcl's stand-in model server "
        "(predict signatures only); TensorFlow Serving serves it",
    )


def _model_info(method, path):
    """(name, version, label, verb or subresource) from a path, or None when it does not match
    (http_rest_api_util.cc ParseModelInfo)."""
    match = (PREDICTION_PATH if method == "POST" else STATUS_PATH).fullmatch(path)
    if match is None:
        return None
    name, version, label, last = match.groups()
    name = urllib.parse.unquote(name) if name else ""
    if version is not None:
        if int(version) >= 2**63:  # absl::SimpleAtoi into int64
            raise _invalid(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    label = urllib.parse.unquote(label) if label else None
    return name, version, label, (last or "").lower()


def _route(manager, method, path, body):
    if method not in ("GET", "POST"):
        raise _invalid(f"Malformed request: {method} {path}")
    info = _model_info(method, path)
    if info is None:
        raise _invalid(f"Malformed request: {method} {path}")
    name, version, label, last = info
    if method == "POST":
        if last in ("classify", "regress"):
            return _classify_or_regress(manager, last, name, version, label, body)
        document = parse_json(body)
        signature_name = _signature_name(document)
        # The version resolved here (its input map converts the JSON) is the one that runs.
        version, servable = manager.resolve(name, version, label)
        key = signature_name or "serving_default"
        if key not in servable.signature_defs:
            raise _invalid(f'Serving signature name: "{key}" not found in signature def')
        input_infos = {alias: info.dtype for alias, info in servable.signature_defs[key].inputs.items()}
        if not input_infos:
            raise _invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        inputs, row_format = predict_request(document, input_infos)
        _, _, outputs = core.predict(manager, name, inputs, version, None, signature_name)
        return predict_response(outputs, row_format)
    if not name:
        raise _invalid("Missing model name in request.")
    if last == "metadata":
        return _metadata_json(core.metadata(manager, name, version, label))
    return _status_json(core.status(manager, name, version))


def _status_json(response):
    from google.protobuf import json_format

    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


def _metadata_json(response):
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[core.SIGNATURE_DEF_FIELD].Unpack(signatures)

    def as_dict(message):
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    return {"model_spec": as_dict(response.model_spec), "metadata": {core.SIGNATURE_DEF_FIELD: as_dict(signatures)}}


def handle(manager, method, path, body=b""):
    """(HTTP status, JSON-ready answer) for one request; never raises for a bad request."""
    path = path.split("?", 1)[0]
    if not HANDLED_PATH.fullmatch(path):
        return 404, {"error": f"Not found: no handler for {path} (the API is under /v1/)"}
    try:
        return 200, _route(manager, method, path, body)
    except ServingError as error:
        return HTTP_STATUS[error.code], {"error": error.message}
