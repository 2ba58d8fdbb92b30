"""One training run: config -> data, network, method, AdversarialModel.fit, files in model_dir
(the layout: robustcl.training.rundir); and the trained network of a run, rebuilt from its files."""

import os
import shutil
import tempfile

import keras

from robustcl import data, methods, models
from robustcl.training import rundir, schedules
from robustcl.training.callbacks import Projector, RunCheckpoints
from robustcl.training.distribute import is_chief, make_strategy, worker_backup
from robustcl.training.model import AdversarialModel


def build_network(config, num_classes, mean, std, image_shape, synchronized_bn=False):
    """The network a run's config describes (weights freshly initialized)."""
    return models.build(
        config.model.name,
        num_classes,
        mean,
        std,
        image_shape,
        embedding_dim=config.model.embedding_dim,
        embedding_head=config.model.embedding_head,
        synchronized_bn=synchronized_bn,
    )


def build_model(config, num_classes, mean, std, image_shape, strategy):
    """Network + method + AdversarialModel, compiled with SGD and the configured LR schedule."""
    method_class = methods.get(config.method.name)
    synchronized = config.run.sync_batchnorm and strategy.num_replicas_in_sync > 1
    network = build_network(config, num_classes, mean, std, image_shape, synchronized)
    return AdversarialModel(
        network,
        method_class(config.method.params, config.run.contrastive_scope),
        train_attack=config.train_attack,
        val_attack=config.val_attack,
        weight_decay=config.optimizer.weight_decay,
        seed=config.run.seed,
        jit_compile_attack=config.run.jit_compile,
    )


def load_network(model_dir, checkpoint="best"):
    """(network, config, DatasetInfo, class names, weights file) of a trained run, its weights from
    best or last.weights.h5. The network is rebuilt in float32 on one device from the run's
    config, whatever precision and strategy trained it (weights are stored in float32 either way)."""
    config = rundir.read_config(model_dir)
    weights = rundir.weights_path(model_dir, checkpoint)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} not found (has the run finished an epoch?)")
    info, class_names = rundir.read_dataset(model_dir, config)
    keras.mixed_precision.set_global_policy("float32")
    network = build_network(config, info.num_classes, info.mean, info.std, info.image_shape)
    network.load_weights(weights)
    return network, config, info, class_names, weights


def compile_model(model, config, steps_per_epoch):
    o = config.optimizer
    optimizer = keras.optimizers.SGD(
        schedules.from_config(o, steps_per_epoch), momentum=o.momentum, nesterov=o.nesterov
    )
    model.compile(optimizer=optimizer, jit_compile=False)
    return model


def steps_per_epoch(config, train_size):
    steps = config.optimizer.steps_per_epoch or train_size // config.data.batch_size
    if steps < 1:
        raise ValueError(
            f"--batch_size={config.data.batch_size} exceeds the {train_size} training images: no full batch to train on"
        )
    return steps


def train(config, flags_text=None, verbose=1):
    """Trains as configured, resuming from model_dir/backup when an earlier run was interrupted.

    Under --strategy=multi_worker every worker runs this with the same config; the chief writes
    model_dir, the others only a temporary backup (see distribute.py)."""
    strategy = make_strategy(config.run.strategy)
    if is_chief(strategy):
        return _train(config, strategy, config.run.model_dir, True, flags_text, verbose)
    else:
        worker_dir = tempfile.mkdtemp(prefix="robustcl-worker-")
        try:
            return _train(config, strategy, worker_dir, False, None, verbose)
        finally:
            shutil.rmtree(worker_dir, ignore_errors=True)


def _train(config, strategy, output_dir, chief, flags_text, verbose):
    if chief:
        rundir.write_run_files(output_dir, config, flags_text)
    keras.utils.set_random_seed(config.run.seed)
    keras.mixed_precision.set_global_policy(config.run.precision)

    splits = data.load(config.data)
    if chief:
        rundir.write_dataset_files(output_dir, splits.info, splits.class_names)
    steps = steps_per_epoch(config, len(splits.train))
    train_ds = data.train_dataset(
        splits.train,
        splits.info.image_shape,
        config.data.batch_size,
        config.data.augment,
        seed=config.run.seed,
        views=methods.get(config.method.name).data_views,
    )
    val_ds = (
        data.eval_dataset(splits.val.images, splits.val.labels, config.data.eval_batch_size)
        if len(splits.val)
        else None
    )

    with strategy.scope():
        model = build_model(
            config, splits.info.num_classes, splits.info.mean, splits.info.std, splits.info.image_shape, strategy
        )
        compile_model(model, config, steps)

    callbacks = []
    if chief:
        # Order matters: checkpoints and history of an epoch are written before the backup says the
        # epoch is done, so a kill between them redoes the epoch instead of losing its files.
        callbacks += [
            RunCheckpoints(model.network, output_dir, monitor="val_robust_accuracy"),
            keras.callbacks.TensorBoard(log_dir=output_dir, update_freq="epoch", write_graph=False),
        ]
        if config.projector.every_epochs and len(splits.val):
            n = config.projector.examples
            callbacks.append(
                Projector(
                    os.path.join(output_dir, rundir.PROJECTOR),
                    splits.val.images[:n] / 255.0,
                    splits.val.labels[:n],
                    splits.class_names,
                    every_epochs=config.projector.every_epochs,
                    attack=config.val_attack,
                    indices=splits.val_indices[:n],
                    seed=config.run.seed,
                )
            )
        backup_dir = os.path.join(output_dir, rundir.BACKUP)
    else:
        backup_dir = worker_backup(os.path.join(config.run.model_dir, rundir.BACKUP), output_dir)
    callbacks.append(keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True, delete_checkpoint=False))
    history = model.fit(
        train_ds,
        epochs=config.optimizer.epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        validation_freq=config.run.validation_freq,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
    return model, history
