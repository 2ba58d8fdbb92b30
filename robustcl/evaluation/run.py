"""Evaluating a training run's checkpoint on the test split: report files, TensorBoard, projector."""

import dataclasses
import os

import numpy as np

from robustcl import data
from robustcl.config import AttackConfig
from robustcl.evaluation import evaluate, report as report_io
from robustcl.training.run import load_network


def evaluate_run(config, progress=True):
    """EvaluationConfig -> (report dict, output directory)."""
    train_config, network, class_names = load_network(config.model_dir, config.checkpoint)
    norm = config.norm or train_config.train_attack.norm
    eps = train_config.train_attack.eps if config.eps < 0 else config.eps
    arrays = data.load_arrays(train_config.data.dataset,
                              config.data_dir or train_config.data.data_dir, config.download)
    n = min(config.num_examples, len(arrays.x_test))
    x = arrays.x_test[:n].astype(np.float32) / 255.0
    y = arrays.y_test[:n]
    result = evaluate(network, x, y, class_names, norm, eps, config.attacks, config.pgd_steps,
                      None, config.pgd_restarts, config.apgd_iterations, config.square_queries,
                      config.sweep, config.seed, config.batch_size, progress,
                      model_name=f"{config.model_dir} ({config.checkpoint})",
                      data_name=f"{train_config.data.dataset} test[:{n}], {arrays.source}")
    result["config"] = dataclasses.asdict(config)
    output_dir = config.output_dir or os.path.join(config.model_dir, f"evaluation_{config.checkpoint}")
    report_io.write(result, output_dir, tensorboard_dir=os.path.join(config.model_dir, "evaluation"))
    if config.projector_examples:
        from robustcl.embeddings.projector import RUN_NAME, write_projector_epoch

        k = min(config.projector_examples, n)
        attack = AttackConfig(name="pgd", norm=norm, eps=eps, step_size=2.5 * eps / config.pgd_steps,
                              steps=config.pgd_steps)
        write_projector_epoch(os.path.join(config.model_dir, RUN_NAME), f"test_{config.checkpoint}",
                              network, x[:k], y[:k], np.arange(k), class_names, attack, step=0,
                              seed=config.seed)
    return result, output_dir
