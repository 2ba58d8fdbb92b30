"""Datasets beyond CIFAR: tfds (SVHN, Imagenette), Tiny-ImageNet's layout, image folder trees, the
Keras cache, and the offline path."""

import os
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from robustcl import data
from robustcl.data.pipeline import fit_to_size
from tests.cifar_files import write_official
from tests.image_files import write_folder_tree, write_tiny_imagenet


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """An empty Keras cache and, through a proxy on a closed port, no route to any download host."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: a connection is refused at once
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    return tmp_path


def test_fit_to_size_resizes_the_shorter_side_and_crops_the_center():
    square = np.random.default_rng(0).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_to_size(square, 24).numpy(), square)  # the right size: untouched
    halves = np.zeros((40, 80, 3), np.uint8)
    halves[:, :40] = (255, 0, 0)
    halves[:, 40:] = (0, 0, 255)
    fitted = fit_to_size(halves, 20).numpy()  # 40x80 -> 20x40, then the center 20 columns (10..29)
    assert fitted.shape == (20, 20, 3)
    np.testing.assert_array_equal(fitted[:, :9], np.broadcast_to([255, 0, 0], (20, 9, 3)))
    np.testing.assert_array_equal(fitted[:, 11:], np.broadcast_to([0, 0, 255], (20, 9, 3)))
    grey = fit_to_size(np.full((10, 30, 1), 77, np.uint8), 8).numpy()  # grayscale becomes RGB
    assert grey.shape == (8, 8, 3) and np.all(grey == 77)


def test_folder_tree_streams_from_disk_with_names_labels_and_computed_statistics(tmp_path):
    written = write_folder_tree(str(tmp_path / "tree"), size=(40, 56))
    dataset = data.load_dataset("folder", str(tmp_path / "tree"), download=False, image_size=32)
    assert dataset.class_names == ("cat", "dog", "emu")
    assert dataset.info.num_classes == 3 and dataset.info.image_shape == (32, 32, 3)
    assert not dataset.train.in_memory and len(dataset.train) == 36 and len(dataset.test) == 12
    assert sorted(zip(dataset.train.files, dataset.train.labels)) == sorted(written["train"])
    # Statistics computed from the training images as fitted to 32x32.
    fitted = np.concatenate(list(data.read_images(dataset.train, 32))).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(dataset.info.mean, fitted.mean(0), atol=1e-6)
    np.testing.assert_allclose(dataset.info.std, fitted.std(0), atol=1e-6)
    # The training stream decodes, fits and augments; every label matches its image's colour.
    splits = data.split(dataset, val_size=6, split_seed=0)
    assert splits.val.in_memory and splits.val.images.shape == (6, 32, 32, 3)
    batch_x, batch_y = next(iter(data.train_dataset(splits.train, (32, 32, 3), 8, augment=False)))
    assert batch_x.shape == (8, 32, 32, 3) and batch_x.dtype == tf.float32
    colours = {
        label: np.asarray(fit_to_size(np.asarray(Image.open(path)), 32)).reshape(-1, 3).mean(0) / 255
        for path, label in written["train"][::12]
    }
    for image, label in zip(np.asarray(batch_x), np.asarray(batch_y)):
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), colours[int(label)], atol=0.02)
    x, y = data.first_test_images(dataset, 5)
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and list(y) == [0, 0, 0, 0, 1]


def test_folder_tree_errors_name_the_problem(tmp_path):
    write_folder_tree(str(tmp_path / "tree"))
    os.makedirs(tmp_path / "tree" / "val" / "yak")
    with pytest.raises(data.DataFormatError, match="classes yak are not in"):
        data.load_dataset("folder", str(tmp_path / "tree"), download=False)
    os.makedirs(tmp_path / "empty" / "train" / "a")
    os.makedirs(tmp_path / "empty" / "val" / "a")
    with pytest.raises(data.DataFormatError, match="no images"):
        data.load_dataset("folder", str(tmp_path / "empty"), download=False)
    with pytest.raises(data.DataNotFoundError, match="train/<class>"):
        data.load_dataset("folder", str(tmp_path), download=False)


def test_tiny_imagenet_official_layout(tmp_path):
    path, val_labels = write_tiny_imagenet(str(tmp_path))
    for data_dir in (path, str(tmp_path)):
        dataset = data.load_dataset("tiny_imagenet", data_dir, download=False)
        assert dataset.class_names == ("thing0", "thing1", "thing2")  # first name in words.txt
        assert dataset.info.image_shape == (64, 64, 3) and dataset.info.num_classes == 3
        assert len(dataset.train) == 120 and not dataset.train.in_memory
        # The val split is the test split, labelled by val_annotations.txt, in its order.
        np.testing.assert_array_equal(dataset.test.labels, val_labels)
        np.testing.assert_allclose(dataset.info.mean, (0.4802, 0.4481, 0.3975))
    with open(os.path.join(path, "val", "val_annotations.txt"), "a") as f:
        f.write("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(data.DataFormatError, match=r"val_annotations.txt:31: class 'n00000000'"):
        data.load_dataset("tiny_imagenet", path, download=False)


@pytest.mark.parametrize("name,tfds_name,size", [("svhn", "svhn_cropped", 32), ("imagenette", "imagenette", 48)])
def test_tfds_datasets_read_through_tfds(name, tfds_name, size, isolated_caches, monkeypatch):
    import tensorflow_datasets as tfds

    # tfds' mock serves random examples of the dataset's features; it writes no dataset_info.json.
    monkeypatch.setattr(data.datasets.formats, "tfds_prepared", lambda builder: True)
    with tfds.testing.mock_data(num_examples=9):
        dataset = data.load_dataset(name, None, download=False, image_size=0 if name == "svhn" else size)
    assert dataset.source.startswith("tfds") and tfds_name in dataset.source
    assert dataset.train.images.shape == (9, size, size, 3) and dataset.train.images.dtype == np.uint8
    assert dataset.test.images.shape == (9, size, size, 3) and dataset.info.num_classes == 10
    assert dataset.train.labels.dtype == np.int32 and dataset.train.labels.max() < 10
    if name == "imagenette":
        assert dataset.class_names[0] == "tench"  # WordNet id n01440764, named


def test_keras_cache_is_looked_in(isolated_caches, monkeypatch):
    # Where keras.datasets.cifar10.load_data() (Keras 3) leaves CIFAR-10.
    cache = isolated_caches / "keras_home" / "datasets" / "cifar-10-batches-py-target"
    _, (x_train, _), _ = write_official(str(cache), per_file=4)
    monkeypatch.setattr(data.datasets.formats, "tfds_prepared", lambda builder: False)
    dataset = data.load_dataset("cifar10", None, download=False)
    np.testing.assert_array_equal(dataset.train.images, x_train)
    assert "cifar-10-batches-py-target" in dataset.source


def test_offline_without_data_fails_in_seconds_saying_where_it_looked(isolated_caches, monkeypatch):
    monkeypatch.setattr(data.datasets.formats, "tfds_prepared", lambda builder: False)
    for name in ("cifar10", "tiny_imagenet"):
        start = time.perf_counter()
        with pytest.raises(data.DataNotFoundError) as error:
            data.load_dataset(name, None, download=True)
        assert time.perf_counter() - start < 20
        message = str(error.value)
        assert "is not reachable from here" in message and "Keras cache" in message, message
    with pytest.raises(data.DataNotFoundError, match="--nodownload"):
        data.load_dataset("cifar10", None, download=False)
