"""Datasets: official CIFAR archives or folders, or TensorFlow Datasets, as uint8 arrays in memory.

Where data is looked for, in order (`load`):
  1. `--data_dir`: the official archive (cifar-10-python.tar.gz / cifar-100-python.tar.gz), its
     extracted folder (cifar-10-batches-py / cifar-100-python), or a directory holding either.
  2. A prepared TensorFlow Datasets copy (in `--data_dir`, else tfds' default data directory).
  3. With `--download` only: tfds downloads and prepares it. Without network access tfds retries for
     minutes, so an offline run never asks it unless told to.
Otherwise one error says where it looked and how to get the data.
"""

import dataclasses
import os
import pickle
import tarfile
from typing import Tuple

import numpy as np


class DataNotFoundError(FileNotFoundError):
    pass


class DataFormatError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: Tuple[int, int, int]
    # Per-channel mean/std of the training pixels in [0, 1] (the published CIFAR statistics).
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    archive: str
    folder: str
    train_files: Tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes


DATASETS = {
    "cifar10": DatasetInfo(
        "cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "cifar-10-python.tar.gz", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        b"labels", b"label_names"),
    "cifar100": DatasetInfo(
        "cifar100", 100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta",
        b"fine_labels", b"fine_label_names"),
}


@dataclasses.dataclass(frozen=True)
class Arrays:
    """A dataset in memory: uint8 NHWC images, int32 labels."""

    info: DatasetInfo
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: Tuple[str, ...]
    source: str


def dataset_info(name):
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def find_official(info, data_dir):
    """The archive or extracted folder of `info` at data_dir, or None."""
    if data_dir is None:
        return None
    candidates = [data_dir, os.path.join(data_dir, info.folder), os.path.join(data_dir, info.archive)]
    for path in candidates:
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, info.meta_file)):
            return path
        if os.path.isfile(path) and path.endswith(info.archive):
            return path
    return None


def _unpickle(fileobj, name):
    try:
        return pickle.load(fileobj, encoding="bytes")
    except Exception as error:  # pickle raises many types on corrupt input
        raise DataFormatError(f"{name}: not a CIFAR python-version batch ({error})") from error


def _read_members(info, path):
    """{file name: unpickled dict} for the batches and meta file of an archive or folder."""
    wanted = set(info.train_files) | {info.test_file, info.meta_file}
    found = {}
    if os.path.isdir(path):
        for name in wanted:
            file_path = os.path.join(path, name)
            if os.path.isfile(file_path):
                with open(file_path, "rb") as f:
                    found[name] = _unpickle(f, file_path)
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar.getmembers():
                    base = os.path.basename(member.name)
                    if member.isfile() and base in wanted and os.path.dirname(member.name).endswith(info.folder):
                        found[base] = _unpickle(tar.extractfile(member), f"{path}:{member.name}")
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataFormatError(f"{path}: cannot read the archive ({error})") from error
    missing = sorted(wanted - set(found))
    if missing:
        raise DataFormatError(f"{path}: missing {', '.join(missing)} (expected the official "
                              f"{info.archive} layout: {info.folder}/{{{', '.join(sorted(wanted))}}})")
    return found


def _batch_arrays(info, batch, name):
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[info.label_key], dtype=np.int32)
    except KeyError as error:
        raise DataFormatError(f"{name}: batch has no {error.args[0]!r} entry") from error
    height, width, channels = info.image_shape
    if data.ndim != 2 or data.shape[1] != height * width * channels or len(labels) != len(data):
        raise DataFormatError(f"{name}: expected data [N, {height * width * channels}] and N labels, "
                              f"got data {data.shape} and {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataFormatError(f"{name}: labels outside [0, {info.num_classes})")
    # Rows hold the R, G and B planes one after another, each row-major.
    images = data.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_official(info, path):
    """Reads the official CIFAR "python version" archive or extracted folder at `path`."""
    members = _read_members(info, path)
    train = [_batch_arrays(info, members[name], name) for name in info.train_files]
    x_test, y_test = _batch_arrays(info, members[info.test_file], info.test_file)
    names = members[info.meta_file].get(info.names_key)
    if names is None or len(names) != info.num_classes:
        raise DataFormatError(f"{path}: {info.meta_file} lacks {info.num_classes} {info.names_key!r}")
    return Arrays(info, np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                  x_test, y_test, tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
                  source=f"official archive {path}")


def _tfds_builder(info, data_dir):
    import tensorflow_datasets as tfds  # imported here: slow, and only needed on this path

    return tfds.builder(info.name, data_dir=data_dir)


def _tfds_prepared(builder):
    import tensorflow as tf

    return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def read_tfds(info, builder):
    import tensorflow_datasets as tfds

    arrays = {}
    for split in ("train", "test"):
        batches = list(tfds.as_numpy(builder.as_dataset(split=split).batch(10000)))
        arrays[split] = (np.concatenate([b["image"] for b in batches]).astype(np.uint8),
                         np.concatenate([b["label"] for b in batches]).astype(np.int32))
    names = tuple(builder.info.features["label"].names)
    return Arrays(info, *arrays["train"], *arrays["test"], names, source=f"tfds {builder.data_dir}")


def load_arrays(name, data_dir=None, download=False):
    """Finds and reads a dataset (see the module docstring for the search order)."""
    info = dataset_info(name)
    looked = []
    if data_dir is not None:
        if not os.path.exists(data_dir):
            raise DataNotFoundError(f"--data_dir={data_dir} does not exist")
        path = find_official(info, data_dir)
        if path is not None:
            return read_official(info, path)
        looked.append(f"{info.archive} or {info.folder}/ at {data_dir}")
    builder = _tfds_builder(info, data_dir)
    if _tfds_prepared(builder):
        return read_tfds(info, builder)
    looked.append(f"a prepared tfds {info.name} under {os.path.dirname(os.path.dirname(builder.data_dir))}")
    if download:
        builder.download_and_prepare()
        return read_tfds(info, builder)
    raise DataNotFoundError(
        f"no {info.name} data found; looked for " + "; ".join(looked) + ". To get it: download the "
        f"official {info.archive} (https://www.cs.toronto.edu/~kriz/cifar.html) and pass "
        f"--data_dir=<the archive, its extracted folder or their directory>, or run with --download "
        f"to let tensorflow_datasets fetch it (needs network access).")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train / validation (held out from the training set) / test arrays."""

    info: DatasetInfo
    class_names: Tuple[str, ...]
    train: Tuple[np.ndarray, np.ndarray]
    val: Tuple[np.ndarray, np.ndarray]
    test: Tuple[np.ndarray, np.ndarray]
    val_indices: np.ndarray  # positions in the original training split, for provenance
    source: str


def split(arrays, val_size, split_seed=0, train_examples=0):
    """Holds out `val_size` training images (a seeded random choice) for model selection.

    The test split is never used for selection. `train_examples` > 0 keeps only that many of the
    remaining training images (smoke runs and tests).
    """
    n = len(arrays.x_train)
    if val_size >= n:
        raise ValueError(f"--val_size={val_size} leaves no training data ({n} training images)")
    order = np.random.default_rng(split_seed).permutation(n)
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    if train_examples:
        train_idx = train_idx[:train_examples]
    return Splits(arrays.info, arrays.class_names,
                  (arrays.x_train[train_idx], arrays.y_train[train_idx]),
                  (arrays.x_train[val_idx], arrays.y_train[val_idx]),
                  (arrays.x_test, arrays.y_test), val_idx, arrays.source)


def load(config):
    """DataConfig -> Splits."""
    arrays = load_arrays(config.dataset, config.data_dir, config.download)
    return split(arrays, config.val_size, config.split_seed, config.train_examples)

