"""The layout of a run directory and of an export: every file name of these layouts is written here
once, and training, evaluation, export, serving and the reproduction grid go through this module.
It reads and writes what the files hold (settings, dataset facts, class names); building a network
from them is `training.run`'s job, loading a classifier of any kind `evaluation.classifiers`'.

A run directory (`--model_dir`):
  config.json, flags.txt    the resolved ExperimentConfig and the flags that produced it
  dataset.json              the dataset facts the network was built with (classes, image shape,
                            normalization mean/std: computed ones included)
  class_names.json          class names in label order
  train/, validation/       TensorBoard event files;  projector/  the embedding projector run
  best.weights.h5, last.weights.h5, history.json    checkpoints and per-epoch figures
  backup/                   model + optimizer state for resuming
  evaluation_<checkpoint>/  report.json, report.md, plots (scripts/evaluate.py)

An export: EXPORT_DIR/<model_name>/<version>/ (saved_model.pb, variables/, and assets.extra/ with
config.json, dataset.json, class_names.json and the evaluation's report.json when there is one).

Files are replaced atomically (robustcl.files).
"""

import json
import os

from robustcl import data, methods, registry
from robustcl.files import atomic_write_text, read_json
from robustcl.training.settings import CHECKPOINTS, ExperimentConfig

CONFIG = "config.json"
FLAGS = "flags.txt"
DATASET = "dataset.json"
CLASS_NAMES = "class_names.json"
HISTORY = "history.json"
BACKUP = "backup"
PROJECTOR = "projector"  # the TensorBoard projector run
EVALUATION_LOGS = "evaluation"  # TensorBoard scalars of scripts/evaluate.py
REPORT = "report.json"
EXPORT_ASSETS = "assets.extra"
# Run files an export carries in assets.extra/ (TF Serving's place for files outside the graph).
EXPORTED_RUN_FILES = (CONFIG, DATASET, CLASS_NAMES)


def weights_path(model_dir, checkpoint):
    CHECKPOINTS.check(checkpoint)
    return os.path.join(model_dir, f"{checkpoint}.weights.h5")


def evaluation_dir(model_dir, checkpoint):
    return os.path.join(model_dir, f"evaluation_{checkpoint}")


def write_run_files(model_dir, config, flags_text=None):
    """The files a run writes before training: its resolved config and the flags behind it."""
    os.makedirs(model_dir, exist_ok=True)
    atomic_write_text(os.path.join(model_dir, CONFIG), config.to_json())
    if flags_text is not None:
        atomic_write_text(os.path.join(model_dir, FLAGS), flags_text)


def write_dataset_files(directory, info, class_names):
    atomic_write_text(os.path.join(directory, DATASET), info.to_json())
    atomic_write_text(os.path.join(directory, CLASS_NAMES), json.dumps(list(class_names)))


def read_config(directory):
    """The ExperimentConfig in `directory` (a run directory or an export's assets.extra), with its
    method's Params typed."""
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {directory} a robustcl run directory?")
    with open(path) as f:
        raw = json.load(f)

    registry.import_modules(raw.get("run", {}).get("extra_modules", ()))  # a user's method or backbone
    return ExperimentConfig.from_dict(raw, methods.get(raw["method"]["name"]).Params)


def read_dataset(directory, config):
    """(DatasetInfo, class names) a run's network was built with. Runs from before dataset.json
    existed trained on a dataset of fixed statistics, which the dataset's spec gives."""
    raw = read_json(os.path.join(directory, DATASET))
    if raw is not None:
        info = data.DatasetInfo.from_dict(raw)
    else:
        spec = data.dataset_spec(config.data.dataset)
        size = data.image_size_of(spec, config.data.image_size)
        info = data.DatasetInfo(spec.name, spec.num_classes, (size, size, 3), spec.mean, spec.std)
    class_names = read_json(os.path.join(directory, CLASS_NAMES))
    if class_names is None:
        class_names = [str(i) for i in range(info.num_classes)]
    return info, tuple(class_names)
