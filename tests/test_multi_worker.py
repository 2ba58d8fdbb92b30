"""--strategy=multi_worker on a real cluster: two `scripts/train.py` processes on 127.0.0.1, each
one CPU worker of MultiWorkerMirroredStrategy, talking gRPC through the TF_CONFIG the user would set.

Two one-device workers are two replicas with synchronized BatchNorm, as MirroredStrategy over two
logical CPU devices of one process is, so the cluster's run must match that run: the batch is
split the same way, every figure is reduced over the global batch (measured: weights and history
bit-identical; the tolerance allows another summation order in the all-reduce). The attack is L2 (see
test_distributed.py for why not L-inf) and augmentation is off (Keras' random layers under a
parallel map do not draw in a fixed order, so two processes would augment differently).
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from robustcl.training.distribute import ClusterConfigError, parse_tf_config
from robustcl.net import free_ports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 epochs of 3 steps; 49 validation images in batches of 32: the last batch (17) splits unevenly.
SMOKE_FLAGS = (
    "--flagfile=configs/smoke.flags",
    "--norm=l2",
    "--eps=0.5",
    "--step_size=0.125",
    "--noaugment",
    "--val_size=49",
    "--eval_batch_size=32",
    "--projector_examples=16",
)
RUN_FLAGS = ("--flagfile=configs/pgd_at_cifar10.flags", *SMOKE_FLAGS)


def _cluster_env(ports, index, tmp_dir):
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
    env["TMPDIR"] = str(tmp_dir)  # where a non-chief worker keeps its backup while it trains
    return env


def _start_cluster(data_dir, model_dir, tmp_path, *extra, run_flags=RUN_FLAGS):
    """Starts both workers, their output going to files (a full pipe would stall a worker)."""
    ports = free_ports(2)
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "train.py"),
        *run_flags,
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--strategy=multi_worker",
        *extra,
    ]
    workers = []
    for index in range(2):
        worker_tmp = tmp_path / f"worker{index}_tmp"
        worker_tmp.mkdir(exist_ok=True)
        out, err = (open(tmp_path / f"worker{index}.{kind}", "w+") for kind in ("out", "err"))
        workers.append(
            (
                subprocess.Popen(
                    command, cwd=REPO, env=_cluster_env(ports, index, worker_tmp), stdout=out, stderr=err, text=True
                ),
                out,
                err,
            )
        )
    return workers


def _wait(workers, timeout=420):
    """(returncode, stdout, stderr) per worker, once both have ended; kills both on timeout."""
    results = []
    try:
        for process, out, err in workers:
            process.wait(timeout=timeout)
            out.seek(0)
            err.seek(0)
            results.append((process.returncode, out.read(), err.read()))
    finally:
        for process, out, err in workers:
            process.kill()
            out.close()
            err.close()
    return results


def _run_cluster(data_dir, model_dir, tmp_path, *extra, run_flags=RUN_FLAGS):
    return _wait(_start_cluster(data_dir, model_dir, tmp_path, *extra, run_flags=run_flags))


def _weights(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


def _assert_cluster_matches_mirrored(data_dir, tmp_path, run_flags):
    """Trains on a two-worker cluster and as two MirroredStrategy replicas; asserts the same
    history and weights. Returns the cluster's run directory."""
    cluster_dir = tmp_path / "cluster"
    results = _run_cluster(data_dir, cluster_dir, tmp_path, run_flags=run_flags)
    for index, (code, _, stderr) in enumerate(results):
        assert code == 0, f"worker {index}:\n{stderr[-3000:]}"
    chief_out, worker_out = results[0][1], results[1][1]
    assert "Epoch 2/2" in chief_out and "Epoch 2/2" in worker_out

    # Only the chief wrote the run directory; the other worker's private backup is gone.
    assert {
        "config.json",
        "flags.txt",
        "dataset.json",
        "class_names.json",
        "history.json",
        "best.weights.h5",
        "last.weights.h5",
        "backup",
        "train",
        "validation",
        "projector",
    } == set(os.listdir(cluster_dir))
    assert os.listdir(tmp_path / "worker1_tmp") == []
    assert json.load(open(cluster_dir / "config.json"))["run"]["strategy"] == "multi_worker"

    # The same run as two replicas of MirroredStrategy: the train script in a fresh process whose CPU
    # is split into 2 logical devices first (as conftest does here; not in this process, where earlier
    # MirroredStrategy tests' collective instances would clash with this run's).
    mirrored_dir = tmp_path / "mirrored"
    argv = ["train.py", *run_flags, f"--data_dir={data_dir}", f"--model_dir={mirrored_dir}", "--strategy=mirrored"]
    script = (
        "import runpy, sys\n"
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path('scripts/train.py', run_name='__main__')\n"
    )
    mirrored = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=420)
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    assert any(
        "Using MirroredStrategy with devices" in line and "CPU:1" in line for line in mirrored.stderr.splitlines()
    ), "two replicas"

    cluster_history = json.load(open(cluster_dir / "history.json"))["epochs"]
    mirrored_history = json.load(open(mirrored_dir / "history.json"))["epochs"]
    assert [set(e) for e in cluster_history] == [set(e) for e in mirrored_history]
    assert {"loss", "robust_accuracy", "val_accuracy", "val_robust_accuracy"} <= set(cluster_history[0])
    for ours, theirs in zip(cluster_history, mirrored_history):
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)
    cluster_weights = _weights(cluster_dir / "last.weights.h5")
    mirrored_weights = _weights(mirrored_dir / "last.weights.h5")
    assert cluster_weights.keys() == mirrored_weights.keys()
    for name in cluster_weights:
        np.testing.assert_allclose(cluster_weights[name], mirrored_weights[name], rtol=1e-5, atol=1e-6, err_msg=name)
    return cluster_dir


def _assert_one_device_trains_what_two_replicas_trained(data_dir, tmp_path, run_flags):
    """The same run on one device: the same batches in the same order (the training stream is the
    seed's for every iterator over it), so the same history, to rounding. While each new iterator
    reshuffled, one device and two replicas read different permutations (two replicas one of two,
    by timing)."""
    single_dir = tmp_path / "single"
    command = [sys.executable, "scripts/train.py", *run_flags, f"--data_dir={data_dir}", f"--model_dir={single_dir}"]
    single = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=420)
    assert single.returncode == 0, single.stderr[-3000:]
    single_history = json.load(open(single_dir / "history.json"))["epochs"]
    mirrored_history = json.load(open(tmp_path / "mirrored" / "history.json"))["epochs"]
    assert [e["epoch"] for e in single_history] == [e["epoch"] for e in mirrored_history] == [1, 2]
    # Validation's attacked entries are left out: the last validation batch (17) splits unevenly over
    # two replicas, and each replica draws its random start for a global batch of twice its own part.
    for ours, theirs in zip(single_history, mirrored_history):
        for name in ("loss", "accuracy", "robust_accuracy", "val_accuracy", "val_ce"):
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, err_msg=name)


@pytest.mark.slow
def test_two_worker_cluster_trains_like_two_replicas_and_resumes(synthetic_cifar10, tmp_path):
    cluster_dir = _assert_cluster_matches_mirrored(synthetic_cifar10, tmp_path, RUN_FLAGS)
    _assert_one_device_trains_what_two_replicas_trained(synthetic_cifar10, tmp_path, RUN_FLAGS)

    # Rerun with one more epoch: both workers restore the chief's backup (epoch 2) and train epoch 3
    # only. Workers resuming from different epochs would fail or wait on each other's collectives.
    again = _run_cluster(synthetic_cifar10, cluster_dir, tmp_path, "--epochs=3")
    for index, (code, _, stderr) in enumerate(again):
        assert code == 0, f"worker {index}:\n{stderr[-3000:]}"
    for _, stdout, _ in again:
        epochs = [line for line in stdout.splitlines() if line.startswith("Epoch ")]
        assert epochs and epochs[0].startswith("Epoch 3/3"), epochs
    assert [e["epoch"] for e in json.load(open(cluster_dir / "history.json"))["epochs"]] == [1, 2, 3]


@pytest.mark.slow
def test_contrastive_method_on_a_cluster_trains_like_two_replicas(synthetic_cifar10, tmp_path):
    """contrastive_at gathers embeddings across workers in its loss and in every attack step (its
    objective is SupCon over the batch): the cluster must train what MirroredStrategy trains, which
    tests/test_distributed.py checks against one device."""
    _assert_cluster_matches_mirrored(
        synthetic_cifar10,
        tmp_path,
        ("--flagfile=configs/contrastive_at_cifar10.flags", *SMOKE_FLAGS, "--embedding_dim=16"),
    )


@pytest.mark.slow
def test_cluster_with_a_killed_worker_stops_and_resumes(synthetic_cifar10, tmp_path):
    model_dir = tmp_path / "run"
    workers = _start_cluster(synthetic_cifar10, model_dir, tmp_path, "--epochs=6", "--projector_every_epochs=0")
    history_path = model_dir / "history.json"
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p, _, _ in workers):
        if history_path.exists() and json.load(open(history_path))["epochs"][-1]["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p, _, _ in workers), "the run ended before it could be interrupted"
    workers[1][0].send_signal(signal.SIGKILL)
    # The chief learns from TensorFlow's coordination service that its peer stopped (seen: 16 s)
    # and stops instead of waiting in a collective forever.
    (chief_code, _, chief_err), _ = _wait(workers, timeout=180)
    assert chief_code != 0, chief_err[-2000:]
    done = json.load(open(model_dir / "backup" / "training_metadata.json"))["epoch"]
    assert 2 <= done < 6

    results = _run_cluster(synthetic_cifar10, model_dir, tmp_path, "--epochs=6", "--projector_every_epochs=0")
    for index, (code, stdout, stderr) in enumerate(results):
        assert code == 0, f"worker {index}:\n{stderr[-3000:]}"
        epochs = [line for line in stdout.splitlines() if line.startswith("Epoch ")]
        assert epochs[0].startswith(f"Epoch {done + 1}/6"), epochs
    assert [e["epoch"] for e in json.load(open(history_path))["epochs"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'has no "cluster"'),
        (
            '{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
            "parameter servers",
        ),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', '"host:port"'),
        ('{"cluster": {"worker": ["a:1"]}}', 'has no "task"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}', "does not train"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "not in the cluster"),
        (
            '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
            r"task index 2 is not in 0\.\.1",
        ),
    ],
)
def test_bad_tf_config_is_named(tf_config, message):
    with pytest.raises(ClusterConfigError, match=message):
        parse_tf_config(tf_config)


def test_tf_config_of_a_cluster_with_a_chief():
    cluster, task_type, index = parse_tf_config(
        json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 1}})
    )
    assert cluster == {"chief": ["a:1"], "worker": ["b:1", "c:1"]} and (task_type, index) == ("worker", 1)


@pytest.mark.slow
def test_multi_worker_without_tf_config_stops_before_any_work(synthetic_cifar10, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "train.py"),
            *RUN_FLAGS,
            f"--data_dir={synthetic_cifar10}",
            f"--model_dir={tmp_path / 'run'}",
            "--strategy=multi_worker",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "error: --strategy=multi_worker needs the TF_CONFIG environment variable" in result.stderr
    assert not (tmp_path / "run").exists(), "no work was done"
