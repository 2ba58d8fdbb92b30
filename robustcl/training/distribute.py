"""tf.distribute strategies by name, and which process of a cluster writes the run's files.

multi_worker runs MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment variable,
the way TensorFlow's own multi-worker training reads it: every process gets the same cluster and its
own task, e.g. for the second of two workers

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 1}}'

The chief (the "chief" task if the cluster has one, else worker 0) writes the run directory; the other
workers write only a private backup, so all of them can resume together (see `worker_backup`).
"""

import json
import os
import shutil

import tensorflow as tf

from robustcl.training import rundir

TF_CONFIG = "TF_CONFIG"
_TASK_TYPES = ("chief", "worker")


class ClusterConfigError(ValueError):
    """TF_CONFIG is missing or does not describe this process's place in a cluster."""


def parse_tf_config(text):
    """(cluster, task_type, task_index) from a TF_CONFIG value, or ClusterConfigError naming the
    problem. Only chief and worker tasks train under MultiWorkerMirroredStrategy."""
    if not text:
        raise ClusterConfigError(
            f"--strategy=multi_worker needs the {TF_CONFIG} environment variable: "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
        )
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClusterConfigError(f"{TF_CONFIG} is not JSON ({error})") from None
    if not isinstance(spec, dict):
        raise ClusterConfigError(f"{TF_CONFIG} must be a JSON object, got {type(spec).__name__}")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterConfigError(f'{TF_CONFIG} has no "cluster" (task type -> list of host:port)')
    unknown = sorted(set(cluster) - set(_TASK_TYPES) - {"evaluator", "ps"})
    if unknown:
        raise ClusterConfigError(
            f"{TF_CONFIG} cluster has unknown task types {unknown}; "
            f"MultiWorkerMirroredStrategy trains on {' and '.join(_TASK_TYPES)}"
        )
    if "ps" in cluster:
        raise ClusterConfigError(
            f"{TF_CONFIG} has parameter servers: multi_worker is MultiWorkerMirroredStrategy, which has none"
        )
    for task_type, addresses in cluster.items():
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)
        ):
            raise ClusterConfigError(
                f'{TF_CONFIG} cluster "{task_type}" must be a non-empty list of "host:port", got {addresses!r}'
            )
    if len(cluster.get("chief", [])) > 1:
        raise ClusterConfigError(f"{TF_CONFIG} has {len(cluster['chief'])} chiefs; at most one")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ClusterConfigError(
            f'{TF_CONFIG} has no "task" {{"type": ..., "index": ...}} saying '
            "which member of the cluster this process is"
        )
    task_type, index = task["type"], task["index"]
    if task_type not in _TASK_TYPES:
        raise ClusterConfigError(
            f"{TF_CONFIG} task type {task_type!r} does not train; this process must be one of {', '.join(_TASK_TYPES)}"
        )
    if task_type not in cluster:
        raise ClusterConfigError(f"{TF_CONFIG} task type {task_type!r} is not in the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ClusterConfigError(
            f"{TF_CONFIG} task index {index!r} is not in 0..{len(cluster[task_type]) - 1}"
            f" (the cluster has {len(cluster[task_type])} {task_type} task(s))"
        )
    return cluster, task_type, index


def make_strategy(name, environ=os.environ):
    """auto: MirroredStrategy over every GPU when there are several, else the default strategy.

    Call it before TensorFlow runs anything else in the process: MultiWorkerMirroredStrategy
    configures the collective runtime, which cannot change once TensorFlow has started."""
    if name == "multi_worker":
        parse_tf_config(environ.get(TF_CONFIG))
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this process writes the run's files: the chief of a cluster (TensorFlow's own answer:
    the "chief" task, else worker 0), or the only process."""
    return strategy.extended.should_checkpoint


def worker_backup(chief_backup, worker_dir):
    """A non-chief worker's backup directory, starting as a copy of the chief's.

    Every worker must resume from the same epoch, or they wait for each other's collectives forever;
    only the chief's backup is kept, so a worker starts from a copy of it. Copying before training is
    safe: the chief cannot finish (and back up) an epoch without this worker's steps."""
    path = os.path.join(worker_dir, rundir.BACKUP)
    if os.path.isdir(chief_backup):
        shutil.copytree(chief_backup, path, dirs_exist_ok=True)
    return path
