"""A stand-in for TensorFlow Serving's `tensorflow_model_server`, for machines where it cannot run.

    python -m robustcl.cli.model_server --port=8500 --rest_api_port=8501 \
        --model_name=NAME --model_base_path=EXPORT_DIR/NAME
    python -m robustcl.cli.model_server --port=8500 --rest_api_port=8501 \
        --model_config_file=models.config [--file_system_poll_wait_seconds=1]

Same flags and defaults as tensorflow_model_server (gRPC on --port, 8500; REST on --rest_api_port,
off unless given), the same version policy (latest 1 by default, `all` or `specific` versions and
labels through the model config), new versions picked up and removed ones unloaded while serving
(servables.py), TF Serving's REST behaviour case by case (rest_api.py) and its gRPC services from
the tensorflow-serving-api protos (grpc_api.py). What it does not cover: README, "Serving".

The HTTP layer answers every request with JSON, whatever arrives: a malformed request line,
headers or body, an unknown method, a body cut short (408 after --rest timeout) all get a 4xx JSON
error, and an unexpected failure a 500 JSON error; the server keeps serving.
"""

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from robustcl import hardware
from robustcl.serving import grpc_api, rest_api
from robustcl.serving.servables import ModelManager

MAX_BODY_BYTES = 1 << 30  # 1 GiB: a larger body is refused (413) before it is read
READ_TIMEOUT_S = 30.0  # TF Serving's --rest_api_timeout_in_ms default


class FailureInjection:
    """The stand-in's test flags: delay every predict, refuse the first N, die at predict N+1."""

    def __init__(self, delay_s=0.0, fail_first=0, die_after=0):
        self.delay_s, self.fail_first, self.die_after = delay_s, fail_first, die_after
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self):
        """None to go on, or the message of an injected UNAVAILABLE answer."""
        with self.lock:
            self.count += 1
            count = self.count
        if self.die_after and count > self.die_after:
            os._exit(17)  # an abrupt crash: no answer, the connection drops
        if self.delay_s:
            time.sleep(self.delay_s)
        if count <= self.fail_first:
            return "Service temporarily unavailable (injected)"
        return None


class _BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def make_handler(manager, before_predict=None):

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server's default (HTTP/0.9) would answer an unparsable request line without a status
        # line; TF Serving's HTTP server answers it as any other error.
        default_request_version = "HTTP/1.0"
        timeout = READ_TIMEOUT_S  # a client that stops sending mid-body does not hold a thread

        def log_message(self, *args):  # quiet: tests send many requests
            pass

        def _send(self, status, payload, close=False):
            data = json.dumps(payload, allow_nan=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)

        def send_error(self, code, message=None, explain=None):
            """http.server's own errors (bad request line, headers, unknown method) as JSON."""
            try:
                self._send(code, {"error": message or explain or self.responses.get(code, ("",))[0]}, close=True)
            except OSError:
                self.close_connection = True

        def _body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._chunked_body()
            length = self.headers.get("Content-Length")
            if length is None:
                return b""
            if not length.strip().isdigit():
                raise _BadRequest(400, f"Content-Length: {length!r} is not a non-negative integer")
            length = int(length)
            if length > MAX_BODY_BYTES:
                raise _BadRequest(413, f"request body of {length} bytes is over the {MAX_BODY_BYTES} byte limit")
            body = self.rfile.read(length)
            if len(body) < length:
                raise _BadRequest(400, f"request body ended after {len(body)} of {length} bytes")
            return body

        def _chunked_body(self):
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024).strip().split(b";")[0]
                try:
                    size = int(line, 16)
                except ValueError:
                    size = -1
                if size < 0:
                    raise _BadRequest(400, f"malformed chunk size {line[:40]!r}")
                if size == 0:
                    self.rfile.readline(1024)
                    return b"".join(parts)
                total += size
                if total > MAX_BODY_BYTES:
                    raise _BadRequest(413, f"request body over the {MAX_BODY_BYTES} byte limit")
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)

        def _dispatch(self):
            try:
                body = self._body()
            except _BadRequest as error:
                return self._send(error.status, {"error": error.message}, close=True)
            except (TimeoutError, OSError):
                return self._send(408, {"error": "request body not received in time"}, close=True)
            try:
                if (
                    self.command == "POST"
                    and before_predict is not None
                    and self.path.split("?")[0].lower().endswith(":predict")
                ):
                    injected = before_predict()
                    if injected is not None:
                        return self._send(503, {"error": injected})
                status, payload = rest_api.handle(manager, self.command, self.path, body)
            except Exception as error:  # a bug must cost one request, not the server
                status, payload = 500, {"error": f"Internal: {type(error).__name__}: {error}"}
            self._send(status, payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    return Handler


class _LingeringHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def shutdown_request(self, request):
        """Closes after reading what the client still sends (up to 1 s, 64 MiB), as HTTP servers
        do: closing with unread input resets the connection, and the client may lose the answer
        (an error sent before the whole request was read, such as a header line too long)."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(1.0)
            for _ in range(1024):
                if not request.recv(65536):
                    break
        except OSError:
            pass
        self.close_request(request)


def serve_rest(manager, host, port, before_predict=None):
    """A started HTTP server (its thread is a daemon); returns the server."""
    server = _LingeringHTTPServer((host, port), make_handler(manager, before_predict))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(args):
    """Serves the models of `args` (robustcl.cli.flags.model_server_args_from_flags) until interrupted."""
    print(hardware.startup_line(), flush=True)
    manager = ModelManager(args["models"], args["poll_wait_seconds"])
    manager.start()
    # Like tensorflow_model_server, open the ports once every model has a version available.
    while not manager.wait_until_available(timeout=5):
        print(
            "waiting for a version of every model: "
            + ", ".join(f"{m.name} under {m.base_path}" for m in args["models"]),
            flush=True,
        )
    injection = FailureInjection(args["delay_s"], args["fail_first"], args["die_after"])
    servers = []
    if args["grpc_port"]:
        servers.append(grpc_api.serve(manager, args["host"], args["grpc_port"], injection))
        print(f"Running gRPC ModelServer at {args['host']}:{args['grpc_port']} ...", flush=True)
    if args["rest_port"]:
        servers.append(serve_rest(manager, args["host"], args["rest_port"], injection))
        print(f"Exporting HTTP/REST API at:{args['host']}:{args['rest_port']} ...", flush=True)
    print(f"serving {manager.available()}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        manager.stop()
