#!/usr/bin/env python
"""Requests/s and latency of the stand-in model server, REST vs gRPC, for batches of 1 and 64 images,
on 127.0.0.1: one line per figure, plus a JSON file.

    python bench/serving_throughput.py [--saved_model=EXPORT_DIR/NAME/1] [--requests 200] \
        [--batches 1,64] [--output bench/results/serving_throughput.json]

Starts `python -m robustcl.cli.model_server` as a real process (gRPC and REST) on an export
(default: the tiny CIFAR network, exported to a temporary directory), then one client sends
--requests predict requests back to back per API and batch size (after 5 warm-up requests) through
robustcl's RestClient (JSON) and GrpcClient (TensorProto). Client and server share the machine's
cores, so the figures are the whole round trip on one machine, not the server's capacity.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robustcl import hardware  # noqa: E402
from robustcl.net import free_ports  # noqa: E402
from robustcl.serving.client import GrpcClient, RestClient  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_export(root):
    import keras

    from robustcl import models
    from robustcl.serving.export import export

    keras.utils.set_random_seed(0)
    network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3)
    return export(network, (32, 32, 3), root, "tiny")


def _start(base_path, name, grpc_port, rest_port, log):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robustcl.cli.model_server",
            "--host=127.0.0.1",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_name={name}",
            f"--model_base_path={base_path}",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = RestClient(f"http://127.0.0.1:{rest_port}", name, max_retries=0)
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the model server exited; see its log")
        try:
            client.status()
            return process
        except Exception:
            time.sleep(0.5)
    process.kill()
    raise TimeoutError("the model server did not start")


def measure(client, images, requests):
    for _ in range(5):
        client.predict(images)
    client.latencies.clear()
    start = time.perf_counter()
    for _ in range(requests):
        client.predict(images)
    seconds = time.perf_counter() - start
    latencies = np.asarray(client.latencies) * 1000
    return {
        "requests_per_s": requests / seconds,
        "images_per_s": requests * len(images) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved_model", default=None, help="an export EXPORT_DIR/NAME/VERSION")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "serving_throughput.json"))
    args = parser.parse_args()
    machine = hardware.detect()
    header = f"{machine.describe()}, {os.cpu_count()} cores"
    print(f"machine: {header}", flush=True)
    work = tempfile.mkdtemp()
    try:
        path = args.saved_model or _tiny_export(os.path.join(work, "models"))
        base_path, name = os.path.dirname(path), os.path.basename(os.path.dirname(path))
        grpc_port, rest_port = free_ports(2)
        with open(os.path.join(work, "server.log"), "wb") as log:
            server = _start(base_path, name, grpc_port, rest_port, log)
            results = []
            try:
                rng = np.random.default_rng(0)
                for batch in [int(b) for b in args.batches.split(",")]:
                    images = rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32)
                    for api, client in (
                        ("rest", RestClient(f"http://127.0.0.1:{rest_port}", name, max_batch=batch)),
                        ("grpc", GrpcClient(f"127.0.0.1:{grpc_port}", name, max_batch=batch)),
                    ):
                        figures = measure(client, images, args.requests)
                        results.append({"api": api, "batch": batch, **figures})
                        print(
                            f"serving {api} batch {batch}: {figures['requests_per_s']:.1f} requests/s, "
                            f"{figures['images_per_s']:.0f} images/s, p50 {figures['p50_ms']:.2f} ms, "
                            f"p99 {figures['p99_ms']:.2f} ms ({header})",
                            flush=True,
                        )
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "serving_throughput",
                "machine": platform.machine(),
                "cpu_model": machine.cpu_model,
                "cpu_flags": list(machine.cpu_flags),
                "cpus": os.cpu_count(),
                "requests": args.requests,
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
