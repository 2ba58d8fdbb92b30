"""Readers of the on-disk layouts datasets come in; each returns train and test `Examples`.

- CIFAR "python version": the official archive (cifar-10-python.tar.gz, cifar-100-python.tar.gz) or
  its extracted folder; read into memory (uint8).
- Tiny-ImageNet: the official `tiny-imagenet-200/` folder (train/<wnid>/images/*.JPEG; val/images
  labelled by val/val_annotations.txt, used as the test split since the official test split has no
  labels); read from disk as it is used.
- An image folder tree: train/<class>/* and val/<class>/* (or test/<class>/*); read from disk.
- A prepared TensorFlow Datasets copy; read into memory, resized to the dataset's image size.
"""

import dataclasses
import os
import pickle
import tarfile
from typing import Optional, Tuple

import numpy as np
from robustcl.data.pipeline import fit_to_size
import tensorflow as tf


class DataNotFoundError(FileNotFoundError):
    pass


class DataFormatError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Examples:
    """One split: int32 labels and either uint8 NHWC images in memory or encoded image files."""

    labels: np.ndarray
    images: Optional[np.ndarray] = None
    files: Optional[np.ndarray] = None  # paths of JPEG/PNG/BMP/GIF files, decoded when read

    def __post_init__(self):
        if (self.images is None) == (self.files is None):
            raise ValueError("Examples hold images or files, exactly one of them")

    def __len__(self):
        return len(self.labels)

    @property
    def in_memory(self):
        return self.images is not None

    def take(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return Examples(
            self.labels[indices],
            None if self.images is None else self.images[indices],
            None if self.files is None else self.files[indices],
        )


@dataclasses.dataclass(frozen=True)
class Read:
    """What a reader found: the splits, the class names in label order, where they came from."""

    train: Examples
    test: Examples
    class_names: Tuple[str, ...]
    source: str


# --- CIFAR, the official "python version" ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CifarLayout:
    archive: str
    folder: str
    train_files: Tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int


CIFAR10 = CifarLayout(
    "cifar-10-python.tar.gz",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    b"labels",
    b"label_names",
    10,
)
CIFAR100 = CifarLayout(
    "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names", 100
)


def find_cifar(layout, directory):
    """The archive or extracted folder of `layout` at or directly under `directory`, or None."""
    candidates = [directory, os.path.join(directory, layout.folder), os.path.join(directory, layout.archive)]
    for path in candidates:
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, layout.meta_file)):
            return path
        if os.path.isfile(path) and path.endswith(layout.archive):
            return path
    return None


def _unpickle(fileobj, name):
    try:
        return pickle.load(fileobj, encoding="bytes")
    except Exception as error:  # pickle raises many types on corrupt input
        raise DataFormatError(f"{name}: not a CIFAR python-version batch ({error})") from error


def _read_cifar_members(layout, path):
    """{file name: unpickled dict} for the batches and meta file of an archive or folder."""
    wanted = set(layout.train_files) | {layout.test_file, layout.meta_file}
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
                    if member.isfile() and base in wanted and os.path.dirname(member.name).endswith(layout.folder):
                        found[base] = _unpickle(tar.extractfile(member), f"{path}:{member.name}")
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataFormatError(f"{path}: cannot read the archive ({error})") from error
    missing = sorted(wanted - set(found))
    if missing:
        raise DataFormatError(
            f"{path}: missing {', '.join(missing)} (expected the official "
            f"{layout.archive} layout: {layout.folder}/{{{', '.join(sorted(wanted))}}})"
        )
    return found


def _cifar_batch(layout, batch, name):
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[layout.label_key], dtype=np.int32)
    except KeyError as error:
        raise DataFormatError(f"{name}: batch has no {error.args[0]!r} entry") from error
    if data.ndim != 2 or data.shape[1] != 32 * 32 * 3 or len(labels) != len(data):
        raise DataFormatError(
            f"{name}: expected data [N, 3072] and N labels, got data {data.shape} and {len(labels)} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataFormatError(f"{name}: labels outside [0, {layout.num_classes})")
    # Rows hold the R, G and B planes one after another, each row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar(layout, path):
    """Reads the official CIFAR "python version" archive or extracted folder at `path`."""
    members = _read_cifar_members(layout, path)
    train = [_cifar_batch(layout, members[name], name) for name in layout.train_files]
    x_test, y_test = _cifar_batch(layout, members[layout.test_file], layout.test_file)
    names = members[layout.meta_file].get(layout.names_key)
    if names is None or len(names) != layout.num_classes:
        raise DataFormatError(f"{path}: {layout.meta_file} lacks {layout.num_classes} {layout.names_key!r}")
    return Read(
        Examples(np.concatenate([y for _, y in train]), images=np.concatenate([x for x, _ in train])),
        Examples(y_test, images=x_test),
        tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
        source=f"official archive {path}",
    )


# --- image files: Tiny-ImageNet and folder trees -----------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _image_files(directory):
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, name))
    )


TINY_IMAGENET_FOLDER = "tiny-imagenet-200"


def find_tiny_imagenet(directory):
    for path in (directory, os.path.join(directory, TINY_IMAGENET_FOLDER)):
        if os.path.isfile(os.path.join(path, "wnids.txt")) and os.path.isdir(os.path.join(path, "train")):
            return path
    return None


def read_tiny_imagenet(path):
    """The official tiny-imagenet-200 layout; its val split (labelled) serves as the test split."""
    with open(os.path.join(path, "wnids.txt")) as f:
        wnids = [line.strip() for line in f if line.strip()]
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    words = {}
    words_path = os.path.join(path, "words.txt")
    if os.path.isfile(words_path):
        with open(words_path) as f:
            for line in f:
                wnid, _, text = line.rstrip("\n").partition("\t")
                words[wnid] = text.split(",")[0].strip()
    train_files, train_labels = [], []
    for wnid in wnids:
        directory = os.path.join(path, "train", wnid, "images")
        if not os.path.isdir(directory):
            raise DataFormatError(f"{path}: no train/{wnid}/images/ (wnids.txt lists {wnid})")
        files = _image_files(directory)
        train_files += files
        train_labels += [label_of[wnid]] * len(files)
    annotations = os.path.join(path, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise DataFormatError(f"{path}: no val/val_annotations.txt (the official layout labels the val images there)")
    val_files, val_labels = [], []
    with open(annotations) as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or not fields[0]:
                continue
            if fields[1] not in label_of:
                raise DataFormatError(f"{annotations}:{number}: class {fields[1]!r} is not in wnids.txt")
            image = os.path.join(path, "val", "images", fields[0])
            if not os.path.isfile(image):
                raise DataFormatError(f"{annotations}:{number}: {image} does not exist")
            val_files.append(image)
            val_labels.append(label_of[fields[1]])
    if not train_files or not val_files:
        raise DataFormatError(
            f"{path}: found {len(train_files)} training and {len(val_files)} val images; expected both"
        )
    return Read(
        Examples(np.asarray(train_labels, np.int32), files=np.asarray(train_files)),
        Examples(np.asarray(val_labels, np.int32), files=np.asarray(val_files)),
        tuple(words.get(w, w) for w in wnids),
        source=f"tiny-imagenet-200 folder {path}",
    )


def find_folder_tree(directory):
    if os.path.isdir(os.path.join(directory, "train")) and _test_folder(directory):
        return directory
    return None


def _test_folder(directory):
    for name in ("val", "test"):
        if os.path.isdir(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def read_folder_tree(path):
    """train/<class>/* and val/<class>/* (or test/<class>/*); classes are the train subfolders,
    in sorted order (as keras.utils.image_dataset_from_directory orders them)."""
    train_root, test_root = os.path.join(path, "train"), _test_folder(path)
    class_names = sorted(d for d in os.listdir(train_root) if os.path.isdir(os.path.join(train_root, d)))
    if not class_names:
        raise DataFormatError(f"{train_root}: no class subfolders (expected train/<class>/<image>)")
    extra = sorted(
        d for d in os.listdir(test_root) if os.path.isdir(os.path.join(test_root, d)) and d not in class_names
    )
    if extra:
        raise DataFormatError(f"{test_root}: classes {', '.join(extra)} are not in {train_root}")
    splits = []
    for root in (train_root, test_root):
        files, labels = [], []
        for label, name in enumerate(class_names):
            directory = os.path.join(root, name)
            found = _image_files(directory) if os.path.isdir(directory) else []
            files += found
            labels += [label] * len(found)
        if not files:
            raise DataFormatError(f"{root}: no images (extensions {', '.join(IMAGE_EXTENSIONS)})")
        splits.append(Examples(np.asarray(labels, np.int32), files=np.asarray(files)))
    return Read(splits[0], splits[1], tuple(class_names), source=f"image folder {path}")


# --- TensorFlow Datasets -----------------------------------------------------------------------


def tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds  # imported here: slow, and only needed on this path

    return tfds.builder(name, data_dir=data_dir)


def tfds_prepared(builder):
    return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def read_tfds(builder, test_split, image_size, class_names=None):
    """A prepared tfds dataset in memory; images of another size are resized (shorter side) and
    center-cropped to image_size, as image files are (robustcl.data.pipeline.decode_to_size)."""
    import tensorflow_datasets as tfds

    splits = []
    for split in ("train", test_split):
        ds = builder.as_dataset(split=split)
        ds = ds.map(
            lambda ex: (fit_to_size(ex["image"], image_size), tf.cast(ex["label"], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).batch(1024)
        batches = list(tfds.as_numpy(ds))
        splits.append(
            Examples(
                np.concatenate([y for _, y in batches]), images=np.concatenate([x for x, _ in batches]).astype(np.uint8)
            )
        )
    names = tuple(builder.info.features["label"].names)
    if class_names:
        names = tuple(class_names.get(n, n) for n in names)
    return Read(splits[0], splits[1], names, source=f"tfds {builder.data_dir}")
