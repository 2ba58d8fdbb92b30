"""Datasets by name: where each is looked for, what it is (classes, image size, statistics), and the
validation holdout.

Where data is looked for, in order (`load_dataset`):
  1. `--data_dir`: the dataset's official layout (CIFAR archive or folder, tiny-imagenet-200/, an
     image folder tree) or a tfds data directory.
  2. A prepared TensorFlow Datasets copy in tfds' default data directory.
  3. The Keras cache (`$KERAS_HOME/datasets`, default ~/.keras/datasets), where
     `keras.datasets.cifar10.load_data()` and `keras.utils.get_file` leave their downloads.
  4. Unless `--nodownload`: a download (tfds for tfds datasets, the official archive into the Keras
     cache for Tiny-ImageNet), after probing the download host for a few seconds: offline, tfds
     would retry for minutes, so an unreachable host fails at once with the message below.
Otherwise one error says where it looked and how to get the data.
"""

import dataclasses
import json
import os
import socket
import threading
import urllib.parse
from typing import Callable, Optional, Tuple

import numpy as np

from robustcl.data import formats
from robustcl.data.formats import DataFormatError, DataNotFoundError, Examples
from robustcl.data.pipeline import read_images
from robustcl.registry import Registry
import keras


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a network trained on a dataset needs to know of it; written to every run directory."""

    name: str
    num_classes: int
    image_shape: Tuple[int, int, int]
    # Per-channel mean/std of the training pixels in [0, 1]: published figures, or computed from the
    # training split (folder trees).
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], int(d["num_classes"]), tuple(d["image_shape"]), tuple(d["mean"]), tuple(d["std"]))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    about: str
    image_size: int  # native size; 0: any size, resized to --image_size
    default_image_size: int
    num_classes: int = 0  # 0: from the data
    mean: Optional[Tuple[float, float, float]] = None  # None: computed from the training split
    std: Optional[Tuple[float, float, float]] = None
    tfds_name: str = ""
    tfds_test_split: str = "test"
    find: Optional[Callable] = None  # directory -> path of the official layout, or None
    read: Optional[Callable] = None  # path -> formats.Read
    keras_cache: Tuple[str, ...] = ()  # names under the Keras cache that may hold the data
    download_url: str = ""  # where a download comes from (probed before downloading)
    # The Keras cache entry a non-tfds download is extracted into (keras.utils.get_file's fname).
    keras_download: str = ""
    download_help: str = ""
    class_names: Optional[dict] = None  # readable names for the data's own (e.g. WordNet ids)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Imagenette's tfds labels are WordNet ids; these are the classes they denote.
IMAGENETTE_NAMES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}


def _cifar(name, layout, mean, std):
    return DatasetSpec(
        name,
        f"CIFAR-{layout.num_classes}",
        32,
        32,
        layout.num_classes,
        mean,
        std,
        tfds_name=name,
        find=lambda d: formats.find_cifar(layout, d),
        read=lambda p: formats.read_cifar(layout, p),
        keras_cache=(f"{layout.folder}-target", layout.folder, layout.archive),
        download_url=f"https://www.cs.toronto.edu/~kriz/{layout.archive}",
        download_help=(
            f"download the official {layout.archive} (https://www.cs.toronto.edu/~kriz/cifar.html) "
            "and pass --data_dir=<the archive, its extracted folder or their directory>"
        ),
    )


DATASETS = Registry("dataset")
for _spec in (
    _cifar("cifar10", formats.CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    _cifar("cifar100", formats.CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    DatasetSpec(
        "svhn",
        "SVHN cropped digits (tfds svhn_cropped)",
        32,
        32,
        10,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        tfds_name="svhn_cropped",
        download_url="http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
        download_help="run once where the network is reachable (tfds prepares svhn_cropped) and "
        "pass --data_dir=<its tfds data directory>",
    ),
    DatasetSpec(
        "tiny_imagenet",
        "Tiny-ImageNet (200 classes, 64x64)",
        64,
        64,
        0,
        (0.4802, 0.4481, 0.3975),
        (0.2302, 0.2265, 0.2262),
        find=formats.find_tiny_imagenet,
        read=formats.read_tiny_imagenet,
        keras_cache=(formats.TINY_IMAGENET_FOLDER, "tiny-imagenet-200-download"),
        keras_download="tiny-imagenet-200-download",
        download_url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        download_help="download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip), "
        "unzip it and pass --data_dir=<tiny-imagenet-200 or its directory>",
    ),
    DatasetSpec(
        "imagenette",
        "Imagenette, 10 ImageNet classes (tfds imagenette)",
        0,
        224,
        10,
        IMAGENET_MEAN,
        IMAGENET_STD,
        tfds_name="imagenette",
        tfds_test_split="validation",
        download_url="https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
        download_help="run once where the network is reachable (tfds prepares imagenette), or "
        "unpack imagenette2.tgz and pass --dataset=folder --data_dir=imagenette2",
        class_names=IMAGENETTE_NAMES,
    ),
    DatasetSpec(
        "folder",
        "an image folder tree: DIR/train/<class>/*, DIR/val/<class>/*",
        0,
        224,
        find=formats.find_folder_tree,
        read=formats.read_folder_tree,
        download_help="pass --data_dir=DIR holding train/<class>/<images> and val/<class>/<images>",
    ),
):
    DATASETS.register(_spec.name)(_spec)


def dataset_spec(name):
    return DATASETS.get(name)


def image_size_of(spec, image_size=0):
    """The image size a run uses: the native size, or --image_size (default the spec's)."""
    if spec.image_size and image_size and image_size != spec.image_size:
        raise ValueError(
            f"{spec.name} images are {spec.image_size}x{spec.image_size}; "
            f"--image_size={image_size} applies to datasets of any size (imagenette, folder)"
        )
    return spec.image_size or image_size or spec.default_image_size


def keras_cache_dir():
    # As keras.utils.get_file: $KERAS_HOME, else ~/.keras (it falls back to /tmp/.keras when ~ is
    # not writable).
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(home, os.W_OK) and not os.path.isdir(os.path.join(home, "datasets")):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "datasets")


def network_reachable(url, timeout=3.0):
    """Whether a TCP connection to the download host (or to the HTTPS/HTTP proxy, when one is set)
    opens within `timeout` seconds, name lookup included (a socket timeout does not bound the
    lookup, so the probe runs in a thread that is given up on)."""
    parsed = urllib.parse.urlparse(url)
    proxy = (
        os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
        if parsed.scheme == "https"
        else os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY")
    )
    if proxy:
        parsed = urllib.parse.urlparse(proxy if "//" in proxy else "//" + proxy)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = []

    def connect():
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result)


@dataclasses.dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    train: Examples
    test: Examples
    class_names: Tuple[str, ...]
    source: str


def _find_on_disk(spec, directory, looked):
    """A Read of the spec's official layout at `directory`, or None (noting where it looked)."""
    if spec.find is None or not os.path.isdir(directory) and not os.path.isfile(directory):
        return None
    path = spec.find(directory)
    if path is None:
        looked.append(f"the {spec.about} layout at {directory}")
        return None
    return spec.read(path)


def _read(spec, data_dir, download, image_size):
    looked = []
    if data_dir is not None:
        if not os.path.exists(data_dir):
            raise DataNotFoundError(f"--data_dir={data_dir} does not exist")
        found = _find_on_disk(spec, data_dir, looked)
        if found is not None:
            return found
    builders = []
    if spec.tfds_name:
        for directory in ([data_dir] if data_dir is not None else []) + [None]:
            builder = formats.tfds_builder(spec.tfds_name, directory)
            if formats.tfds_prepared(builder):
                return formats.read_tfds(builder, spec.tfds_test_split, image_size, spec.class_names)
            looked.append(
                f"a prepared tfds {spec.tfds_name} under {os.path.dirname(os.path.dirname(builder.data_dir))}"
            )
            builders.append(builder)
    cache = keras_cache_dir()
    for name in spec.keras_cache:
        path = os.path.join(cache, name)
        if os.path.exists(path):
            found = _find_on_disk(spec, path, looked)
            if found is not None:
                return found
    if spec.keras_cache:
        looked.append(f"the Keras cache {cache}")
    if download and spec.download_url:
        if not network_reachable(spec.download_url):
            looked.append(
                f"a download ({urllib.parse.urlparse(spec.download_url).hostname} is not reachable from here)"
            )
        elif spec.tfds_name:
            builders[-1].download_and_prepare()
            return formats.read_tfds(builders[-1], spec.tfds_test_split, image_size, spec.class_names)
        else:
            extracted = keras.utils.get_file(
                spec.keras_download, origin=spec.download_url, extract=True, cache_dir=os.path.dirname(cache)
            )
            found = _find_on_disk(spec, extracted, looked)
            if found is not None:
                return found
    elif spec.download_url:
        looked.append("no download (--nodownload)")
    how = spec.download_help
    if spec.download_url and not download:
        how += ", or run without --nodownload where the network is reachable"
    raise DataNotFoundError(f"no {spec.name} data found; looked for " + "; ".join(looked) + f". To get it: {how}.")


def load_dataset(name, data_dir=None, download=True, image_size=0, stats_examples=2000):
    """Finds and reads a dataset (see the module docstring for the search order)."""
    spec = dataset_spec(name)
    size = image_size_of(spec, image_size)
    read = _read(spec, data_dir, download, size)
    num_classes = spec.num_classes or len(read.class_names)
    for split_name, examples in (("train", read.train), ("test", read.test)):
        if len(examples) and (examples.labels.min() < 0 or examples.labels.max() >= num_classes):
            raise DataFormatError(f"{read.source}: {split_name} labels outside [0, {num_classes})")
        if examples.in_memory and examples.images.shape[1:] != (size, size, 3):
            raise DataFormatError(
                f"{read.source}: {split_name} images are {examples.images.shape[1:]}, expected {(size, size, 3)}"
            )
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    else:
        mean, std = channel_statistics(read.train, size, stats_examples)
    info = DatasetInfo(name, num_classes, (size, size, 3), tuple(mean), tuple(std))
    return Dataset(info, read.train, read.test, read.class_names, read.source)


def channel_statistics(examples, image_size, max_examples=2000, seed=0):
    """Per-channel mean and std of [0, 1] pixels over up to max_examples training images (a seeded
    sample; the figures move by about 1e-3 between samples of 2000)."""
    n = len(examples)
    chosen = np.sort(np.random.default_rng(seed).permutation(n)[:max_examples])
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for batch in read_images(examples.take(chosen), image_size):
        pixels = batch.reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(0)
        squares += np.square(pixels).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train / validation (held out from the training set) / test examples."""

    info: DatasetInfo
    class_names: Tuple[str, ...]
    train: Examples
    val: Examples  # always in memory (small; cached for validation and the projector)
    test: Examples
    val_indices: np.ndarray  # positions in the original training split, for provenance
    source: str


def split(dataset, val_size, split_seed=0, train_examples=0):
    """Holds out `val_size` training images (a seeded random choice) for model selection.

    The test split is never used for selection. `train_examples` > 0 keeps only that many of the
    remaining training images (smoke runs and tests).
    """
    n = len(dataset.train)
    if val_size >= n:
        raise ValueError(f"--val_size={val_size} leaves no training data ({n} training images)")
    order = np.random.default_rng(split_seed).permutation(n)
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    if train_examples:
        train_idx = train_idx[:train_examples]
    val = in_memory(dataset.train.take(val_idx), dataset.info.image_shape[0])
    return Splits(
        dataset.info, dataset.class_names, dataset.train.take(train_idx), val, dataset.test, val_idx, dataset.source
    )


def in_memory(examples, image_size):
    """The examples with their images decoded into memory (uint8)."""
    if examples.in_memory:
        return examples
    batches = list(read_images(examples, image_size))
    images = np.concatenate(batches) if batches else np.zeros((0, image_size, image_size, 3), np.uint8)
    return Examples(examples.labels, images=images)


def first_test_images(dataset, n):
    """The first n test images in [0, 1] (float32) and their labels: the evaluation's points."""
    n = min(n, len(dataset.test))
    examples = in_memory(dataset.test.take(np.arange(n)), dataset.info.image_shape[0])
    return examples.images.astype(np.float32) / 255.0, examples.labels


def load(config):
    """DataConfig -> Splits."""
    dataset = load_dataset(config.dataset, config.data_dir, config.download, config.image_size)
    return split(dataset, config.val_size, config.split_seed, config.train_examples)
