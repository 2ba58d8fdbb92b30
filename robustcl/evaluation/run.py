"""Evaluating a model on the test split: a training run's checkpoint, a SavedModel (a robustcl
export or any other) or a Keras model file; in chunks that are persisted as they finish, split
over shards (processes or machines) and over the devices of one machine.

Finished chunks persist in OUTPUT_DIR/chunks/ (robustcl.evaluation.chunks): a rerun skips them, a
rerun with other settings is refused, and the report is made from the chunks once all are there.
"""

import concurrent.futures
import contextlib
import dataclasses
import os

import numpy as np

from robustcl import data
from robustcl.evaluation import classifiers
from robustcl.evaluation.chunks import ChunkStore, read_all
from robustcl.training import rundir
from robustcl.files import fingerprint
from robustcl.attacks.settings import AttackConfig
from robustcl.settings import ConfigError
from robustcl.evaluation import attacks as eval_attacks
from robustcl.evaluation.engine import Plan, chunk_starts, evaluate_chunk, merge
from robustcl.evaluation import report as report_io
from robustcl.evaluation.suite import Attacker
from robustcl.embeddings.projector import write_projector_epoch
import tensorflow as tf

DEFAULT_NORM, DEFAULT_EPS = "linf", 8 / 255


def _threat_model(config, classifier):
    """(norm, eps, where they came from): flags first, then the model's training config."""
    train = classifier.config.train_attack if classifier.config else None
    norm = config.norm or (train.norm if train else DEFAULT_NORM)
    if config.eps >= 0:
        return norm, config.eps, "flags"
    if train:
        return norm, train.eps, "the training config"
    return norm, DEFAULT_EPS, "default (no --eps, no training config)"


def test_dataset(classifier, dataset=None, data_dir=None, download=True, image_size=0):
    """The dataset a classifier is evaluated on: its own (its robustcl config names it), or
    `dataset` when it carries no config (then required); the flags' names are in the errors."""
    own = classifier.config.data if classifier.config else None
    if own is None and not dataset:
        raise ConfigError(
            f"--dataset: required for a model without a robustcl config (known: {', '.join(data.DATASETS.names())})"
        )
    if own is not None and dataset and dataset != own.dataset:
        raise ConfigError(f"--dataset={dataset}: the model was trained on {own.dataset}")
    name = dataset or own.dataset
    image_size = image_size or (own.image_size if own else 0)
    return data.load_dataset(name, data_dir or (own.data_dir if own else None), download, image_size)


def _shard_starts(starts, num_shards, shard_index):
    return [s for k, s in enumerate(starts) if k % num_shards == shard_index]


def _settings(config, classifier, plan, data_name, num_points, surrogate=None):
    """What the chunks' results depend on: the model (its files' hash), the points, the plan."""
    # Paths are left out, so shards on machines that mount the model or data elsewhere still match.
    calling = {
        k: getattr(config, k) for k in ("checkpoint", "signature", "input_key", "output_key", "input_range", "outputs")
    }
    return {
        "model_fingerprint": fingerprint(*classifier.files),
        **calling,
        "surrogate_fingerprint": fingerprint(*surrogate.files) if surrogate else "",
        "data": data_name,
        "num_points": int(num_points),
        **dataclasses.asdict(plan),
    }


def _devices(strategy):
    if strategy == "one_device":
        return [None]
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    return devices or [d.name for d in tf.config.list_logical_devices("CPU")]


def _evaluate_chunks(network, x, y, starts, plan, store, devices, progress, surrogate=None):
    """Evaluates the chunks at `starts`, spread over `devices` (one thread and attacker each),
    writing each as it finishes."""
    log = print if progress else (lambda *a, **k: None)

    def worker(device, my_starts):
        with tf.device(device) if device else contextlib.nullcontext():
            attacker = Attacker(network, plan.batch_size, progress and len(devices) == 1)
            surrogate_attacker = Attacker(surrogate, plan.batch_size, False) if surrogate is not None else None
            for start in my_starts:
                end = start + plan.chunk_size
                log(f"chunk of points {start}..{min(end, len(x)) - 1}" + (f" on {device}" if device else ""))
                store.write(
                    evaluate_chunk(
                        attacker,
                        x[start:end],
                        y[start:end],
                        start,
                        plan,
                        log if len(devices) == 1 else (lambda *a, **k: None),
                        preflight=(start == 0),
                        surrogate=surrogate_attacker,
                    )
                )

    assignments = [(device, starts[i :: len(devices)]) for i, device in enumerate(devices)]
    if len(devices) == 1:
        worker(*assignments[0])
        return
    with concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
        for future in [pool.submit(worker, *a) for a in assignments]:
            future.result()


def evaluate_run(config, progress=True):
    """EvaluationConfig -> (report dict, output directory); the report is None when this process
    evaluated one shard (--shard_index) and left the merge to another."""
    eval_attacks.check("attacks", config.attacks)
    classifier = classifiers.load_classifier(config)
    dataset = test_dataset(classifier, config.dataset, config.data_dir, config.download, config.image_size)
    if classifier.info is not None and classifier.info.num_classes != dataset.info.num_classes:
        raise classifiers.ModelLoadError(
            f"the model has {classifier.info.num_classes} classes; {dataset.info.name} has {dataset.info.num_classes}"
        )
    x, y = data.first_test_images(dataset, config.num_examples)
    classifiers.check_against_data(
        classifier, dataset.info.image_shape, dataset.info.num_classes, x[:2], config.outputs
    )
    norm, eps, eps_source = _threat_model(config, classifier)
    eval_attacks.check("attacks", config.attacks, norm, config.version)
    output_dir = config.output_dir or rundir.evaluation_dir(config.model_dir, config.checkpoint)
    n = len(x)
    class_names = classifier.class_names or dataset.class_names
    surrogate = (
        classifiers.load_path(config.transfer_from, config.transfer_checkpoint, flag="transfer_from")
        if config.transfer_from
        else None
    )
    if surrogate is not None:
        classifiers.check_against_data(surrogate, dataset.info.image_shape, dataset.info.num_classes, x[:2])
    # Keywords: a Plan field added between others must not shift what these mean.
    plan = Plan(
        norm=norm,
        eps=eps,
        attacks=tuple(config.attacks),
        pgd_steps=config.pgd_steps,
        pgd_restarts=config.pgd_restarts,
        apgd_iterations=config.apgd_iterations,
        square_queries=config.square_queries,
        version=config.version,
        apgd_restarts=config.apgd_restarts,
        fab_restarts=config.fab_restarts,
        eot_iterations=config.eot_iterations,
        square_restarts=config.square_restarts,
        sweep=config.sweep,
        sweep_attack=config.sweep_attack,
        seed=config.seed,
        batch_size=config.batch_size,
        chunk_size=config.chunk_size,
        transfer=surrogate is not None,
        transfer_in_worst_case=config.transfer_in_worst_case,
    )
    data_name = f"{dataset.info.name} test[:{n}]"
    store = ChunkStore(output_dir, _settings(config, classifier, plan, data_name, n, surrogate))
    store.check_settings()
    starts = chunk_starts(n, plan.chunk_size)
    if config.shard_index >= 0:
        mine = _shard_starts(starts, config.num_shards, config.shard_index)
    else:
        mine = starts if config.num_shards == 1 else []  # several shards: merge only
    todo = [s for s in mine if not store.has(s)]
    if progress and len(todo) < len(mine):
        print(f"{len(mine) - len(todo)} of {len(mine)} chunks already done in {store.directory}")
    _evaluate_chunks(
        classifier.network,
        x,
        y,
        todo,
        plan,
        store,
        _devices(config.strategy),
        progress,
        surrogate.network if surrogate is not None else None,
    )
    if config.shard_index >= 0:
        return None, output_dir
    result = merge(
        read_all(store, starts, config.num_shards),
        y,
        class_names,
        plan,
        model_name=classifier.name,
        data_name=f"{data_name}, {dataset.source}",
    )
    result["threat_model_from"] = eps_source
    if surrogate is not None:
        result["transfer_from"] = surrogate.name
        # Which surrogate, exactly: one retrained from the same flags on another machine is another
        # network, and transfer accuracies against two surrogates do not compare point for point.
        result["transfer_fingerprint"] = fingerprint(*surrogate.files)
        result["transfer_in_worst_case"] = config.transfer_in_worst_case
    result["model_notes"] = list(classifier.notes)
    result["config"] = dataclasses.asdict(config)
    tensorboard_dir = os.path.join(config.model_dir, rundir.EVALUATION_LOGS) if config.model_dir else None
    report_io.write(result, output_dir, tensorboard_dir=tensorboard_dir)
    if config.projector_examples and classifier.has_embedding:
        k = min(config.projector_examples, n)
        attack = AttackConfig(
            name="pgd", norm=norm, eps=eps, step_size=2.5 * eps / config.pgd_steps, steps=config.pgd_steps
        )
        write_projector_epoch(
            os.path.join(config.model_dir, rundir.PROJECTOR),
            f"test_{config.checkpoint}",
            classifier.network,
            x[:k],
            y[:k],
            np.arange(k),
            class_names,
            attack,
            step=0,
            seed=config.seed,
        )
    return result, output_dir
