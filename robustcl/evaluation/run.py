"""Evaluating a model on the test split: a training run's checkpoint, a SavedModel (a robustcl
export or any other) or a Keras model file."""

import dataclasses
import os

import numpy as np

from robustcl import artifacts, data
from robustcl.config import AttackConfig, ConfigError
from robustcl.evaluation import evaluate, report as report_io

DEFAULT_NORM, DEFAULT_EPS = "linf", 8 / 255


def load_classifier(config):
    """EvaluationConfig -> artifacts.Classifier."""
    if config.model_dir:
        return artifacts.load_run(config.model_dir, config.checkpoint)
    if config.saved_model:
        return artifacts.load_saved_model(config.saved_model, config.signature, config.input_key,
                                          config.output_key, config.input_range, config.outputs)
    return artifacts.load_keras_model(config.keras_model, config.output_key, config.input_range,
                                      config.outputs)


def _threat_model(config, classifier):
    """(norm, eps, where they came from): flags first, then the model's training config."""
    train = classifier.config.train_attack if classifier.config else None
    norm = config.norm or (train.norm if train else DEFAULT_NORM)
    if config.eps >= 0:
        return norm, config.eps, "flags"
    if train:
        return norm, train.eps, "the training config"
    return norm, DEFAULT_EPS, "default (no --eps, no training config)"


def _dataset(config, classifier):
    """The dataset to evaluate on: the model's own, or --dataset when it carries no config."""
    own = classifier.config.data if classifier.config else None
    if own is None and not config.dataset:
        raise ConfigError("--dataset: required for a model without a robustcl config (known: "
                          f"{', '.join(sorted(data.DATASETS))})")
    if own is not None and config.dataset and config.dataset != own.dataset:
        raise ConfigError(f"--dataset={config.dataset}: the model was trained on {own.dataset}")
    name = config.dataset or own.dataset
    image_size = config.image_size or (own.image_size if own else 0)
    return data.load_dataset(name, config.data_dir or (own.data_dir if own else None),
                             config.download, image_size)


def evaluate_run(config, progress=True):
    """EvaluationConfig -> (report dict, output directory)."""
    classifier = load_classifier(config)
    dataset = _dataset(config, classifier)
    if classifier.info is not None and classifier.info.num_classes != dataset.info.num_classes:
        raise artifacts.ModelLoadError(
            f"the model has {classifier.info.num_classes} classes; {dataset.info.name} has "
            f"{dataset.info.num_classes}")
    x, y = data.first_test_images(dataset, config.num_examples)
    artifacts.check_against_data(classifier, dataset.info.image_shape, dataset.info.num_classes,
                                 x[:2], config.outputs)
    norm, eps, eps_source = _threat_model(config, classifier)
    output_dir = config.output_dir or artifacts.evaluation_dir(config.model_dir, config.checkpoint)
    n = len(x)
    class_names = classifier.class_names or dataset.class_names
    result = evaluate(classifier.network, x, y, class_names, norm, eps, config.attacks,
                      config.pgd_steps, None, config.pgd_restarts, config.apgd_iterations,
                      config.square_queries, config.sweep, config.seed, config.batch_size, progress,
                      model_name=classifier.name,
                      data_name=f"{dataset.info.name} test[:{n}], {dataset.source}",
                      sweep_attack=config.sweep_attack)
    result["threat_model_from"] = eps_source
    result["model_notes"] = list(classifier.notes)
    result["config"] = dataclasses.asdict(config)
    tensorboard_dir = (os.path.join(config.model_dir, artifacts.EVALUATION_LOGS) if config.model_dir
                       else None)
    report_io.write(result, output_dir, tensorboard_dir=tensorboard_dir)
    if config.projector_examples and classifier.has_embedding:
        from robustcl.embeddings.projector import write_projector_epoch

        k = min(config.projector_examples, n)
        attack = AttackConfig(name="pgd", norm=norm, eps=eps, step_size=2.5 * eps / config.pgd_steps,
                              steps=config.pgd_steps)
        write_projector_epoch(os.path.join(config.model_dir, artifacts.PROJECTOR), f"test_{config.checkpoint}",
                              classifier.network, x[:k], y[:k], np.arange(k), class_names, attack,
                              step=0, seed=config.seed)
    return result, output_dir
