"""Shared fixtures. The CPU is split into 2 logical devices before TensorFlow starts, so
MirroredStrategy tests run 2 real replicas; single-device code uses the first."""

import os
import socket
import subprocess
import sys
import tempfile
import time

import robustcl  # noqa: F401  (first: it picks TensorFlow's CPU backend, fixed at TensorFlow's import)

import numpy as np
import pytest
import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402  (after the device split)

from robustcl import models  # noqa: E402
from robustcl.net import free_ports  # noqa: E402

CIFAR10_ENV = "ROBUSTCL_CIFAR10_DIR"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cifar10_dir():
    """Directory with real CIFAR-10 in the official layout (set by .ci/run), or skip."""
    path = os.environ.get(CIFAR10_ENV)
    if not path:
        pytest.skip(
            f"{CIFAR10_ENV} is not set: no real CIFAR-10 here (.ci/run builds it from ../shared/data/make_cifar10.py)"
        )
    if not os.path.exists(path):
        pytest.skip(f"{CIFAR10_ENV}={path} does not exist")
    return path


def template_batch(n=128, num_classes=10, seed=0, contrast=0.03, noise=0.05):
    """Images in [0,1] whose class is a faint low-frequency template under noise: easy to fit,
    and, fitted, fragile to small perturbations (an undefended model to attack)."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.5 - contrast, 0.5 + contrast, size=(num_classes, 4, 4, 3))
    templates = np.repeat(np.repeat(templates, 8, 1), 8, 2)
    y = (np.arange(n) % num_classes).astype("int32")
    x = np.clip(templates[y] + rng.normal(0, noise, size=(n, 32, 32, 3)), 0, 1).astype("float32")
    return x, y


def cleverhans_pgd(model_fn, x, y, eps, steps):
    """cleverhans' L-inf PGD (an independent implementation of ours): no random start, step eps/4."""
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    return projected_gradient_descent(
        model_fn,
        tf.constant(x),
        eps,
        eps / 4,
        steps,
        np.inf,
        clip_min=0.0,
        clip_max=1.0,
        y=tf.constant(y),
        rand_init=False,
        sanity_checks=False,
    ).numpy()


@pytest.fixture(scope="session")
def undefended():
    """(network, x, y): the tiny CNN fitted to 100% clean accuracy on its own training batch."""
    keras.utils.set_random_seed(0)
    x, y = template_batch()
    network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3)
    classifier = keras.Model(network.input, network.output["logits"])
    classifier.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(x, y, epochs=30, batch_size=32, verbose=0)
    return network, x, y


@pytest.fixture(scope="session")
def synthetic_cifar10(tmp_path_factory):
    """A small CIFAR-10 in the official archive layout (60 images per file), for runs of the scripts."""
    from tests.cifar_files import write_official

    path, _, _ = write_official(str(tmp_path_factory.mktemp("cifar10")), "cifar10", per_file=60, tar=True)
    return path


class ModelServer:
    """The stand-in tensorflow_model_server as a real process: gRPC on --port, REST on
    --rest_api_port, as the real server's flags mean them."""

    def __init__(self, base_path, *args, poll="1"):
        self.grpc_port, self.port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.log = tempfile.TemporaryFile()  # a pipe nobody reads would block a chatty server
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "robustcl.cli.model_server",
                "--host=127.0.0.1",
                *([f"--model_base_path={base_path}"] if base_path else []),
                f"--file_system_poll_wait_seconds={poll}",
                f"--port={self.grpc_port}",
                f"--rest_api_port={self.port}",
                *args,
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, self.output()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("server did not start")

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
