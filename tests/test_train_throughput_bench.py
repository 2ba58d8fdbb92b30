"""bench/train_throughput.py: the convolution ceiling counts the network's convolutions and the kernels
each pass runs, and the bench prints and records it end to end at a tiny size."""

import json
import os
import subprocess
import sys

import keras
import pytest

from robustcl import methods, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import train_throughput  # noqa: E402


@pytest.mark.parametrize("model_name", ["tiny", "resnet18"])
def test_the_ceiling_times_every_convolution_of_the_network(model_name):
    network = train_throughput._network(model_name, 32)
    dense = sum(
        2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        for layer in network.layers
        if isinstance(layer, keras.layers.Dense)
    )
    kernels = train_throughput._conv_kernels(network)
    assert sum(kernels.values()) == sum(isinstance(layer, keras.layers.Conv2D) for layer in network.layers)
    seconds, flops = train_throughput.measure_conv_ceiling(network, batch_size=2, dtype="float32", repeats=1)
    # Its FLOPs, from the shapes it timed, are the network's convolution FLOPs as the bench counts them.
    assert flops == models.forward_flops(network) - dense
    assert all(value > 0 for value in seconds.values())
    assert seconds["first_input_gradient"] < seconds["input_gradient"]


def test_a_pass_runs_the_kernels_it_needs():
    seconds = {"forward": 1.0, "input_gradient": 10.0, "filter_gradient": 100.0, "first_input_gradient": 4.0}
    # Inference: forward only. Attack: forward and the gradient to the input. Trained: forward and both
    # gradients, less the first layer's input gradient (nothing before it has weights).
    assert train_throughput.ceiling_seconds(seconds, {"inference": 1, "attack": 0, "trained": 0}) == 1.0
    assert train_throughput.ceiling_seconds(seconds, {"inference": 0, "attack": 1, "trained": 0}) == 11.0
    assert train_throughput.ceiling_seconds(seconds, {"inference": 0, "attack": 0, "trained": 1}) == 107.0
    passes = methods.get("morel")().passes_per_step(10)._asdict()
    assert train_throughput.ceiling_seconds(seconds, passes) == 10 * 11.0 + 2 * 107.0


def test_the_bench_prints_and_records_each_steps_fraction_of_its_convolutions(tmp_path):
    output = tmp_path / "train_throughput.json"
    command = [
        sys.executable,
        "bench/train_throughput.py",
        "--models=tiny",
        "--methods=pgd_at",
        "--precisions=float32",
        "--batch_size=8",
        "--attack_steps=1",
        "--steps=1",
        f"--output={output}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())
    ceiling = figures["conv_ceilings_s_per_image"]["tiny float32"]
    by_method = {r["method"]: r for r in figures["results"]}
    assert set(by_method) == {"plain_keras_pgd", "pgd_at"}
    for r in by_method.values():
        expected = train_throughput.ceiling_seconds(ceiling, r["passes"]) * r["images_per_s"]
        assert r["fraction_of_conv_ceiling"] == pytest.approx(expected)
    assert by_method["pgd_at"]["passes"] == {"inference": 1, "attack": 1, "trained": 1}
    assert "conv ceiling tiny float32 batch=8" in result.stdout
    assert "of the step)" in result.stdout
