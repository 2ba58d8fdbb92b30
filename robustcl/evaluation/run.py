"""Evaluating a training run's checkpoint, or an exported SavedModel, on the test split."""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from robustcl import data, methods
from robustcl.config import AttackConfig, ExperimentConfig
from robustcl.evaluation import evaluate, report as report_io
from robustcl.training.run import load_network


class SavedModelNetwork:
    """An export's differentiable `logits` signature, called like a network: x -> {"logits"}."""

    def __init__(self, path):
        # Keep the loaded object: its variables die with it, and the signature only refers to them.
        self.loaded = tf.saved_model.load(path)
        self.signature = self.loaded.signatures["logits"]

    def __call__(self, images, training=False):
        del training  # the export holds only the inference path
        return {"logits": self.signature(images=tf.cast(images, tf.float32))["logits"]}


def _load_export(path):
    extra = os.path.join(path, "assets.extra")
    with open(os.path.join(extra, "config.json")) as f:
        raw = json.load(f)
    with open(os.path.join(extra, "class_names.json")) as f:
        class_names = tuple(json.load(f))
    config = ExperimentConfig.from_dict(raw, methods.get(raw["method"]["name"]).Params)
    return config, SavedModelNetwork(path), class_names


def evaluate_run(config, progress=True):
    """EvaluationConfig -> (report dict, output directory)."""
    if config.saved_model:
        train_config, network, class_names = _load_export(config.saved_model)
        model_name, output_dir = config.saved_model, config.output_dir
    else:
        train_config, network, class_names = load_network(config.model_dir, config.checkpoint)
        model_name = f"{config.model_dir} ({config.checkpoint})"
        output_dir = config.output_dir or os.path.join(config.model_dir, f"evaluation_{config.checkpoint}")
    norm = config.norm or train_config.train_attack.norm
    eps = train_config.train_attack.eps if config.eps < 0 else config.eps
    arrays = data.load_arrays(train_config.data.dataset,
                              config.data_dir or train_config.data.data_dir, config.download)
    n = min(config.num_examples, len(arrays.x_test))
    x = arrays.x_test[:n].astype(np.float32) / 255.0
    y = arrays.y_test[:n]
    result = evaluate(network, x, y, class_names, norm, eps, config.attacks, config.pgd_steps,
                      None, config.pgd_restarts, config.apgd_iterations, config.square_queries,
                      config.sweep, config.seed, config.batch_size, progress, model_name=model_name,
                      data_name=f"{train_config.data.dataset} test[:{n}], {arrays.source}",
                      sweep_attack=config.sweep_attack)
    result["config"] = dataclasses.asdict(config)
    tensorboard_dir = os.path.join(config.model_dir, "evaluation") if config.model_dir else None
    report_io.write(result, output_dir, tensorboard_dir=tensorboard_dir)
    if config.projector_examples and config.model_dir:  # an export has no embedding output
        from robustcl.embeddings.projector import RUN_NAME, write_projector_epoch

        k = min(config.projector_examples, n)
        attack = AttackConfig(name="pgd", norm=norm, eps=eps, step_size=2.5 * eps / config.pgd_steps,
                              steps=config.pgd_steps)
        write_projector_epoch(os.path.join(config.model_dir, RUN_NAME), f"test_{config.checkpoint}",
                              network, x[:k], y[:k], np.arange(k), class_names, attack, step=0,
                              seed=config.seed)
    return result, output_dir
