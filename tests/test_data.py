import os
import pickle

import numpy as np
import pytest

from robustcl import data
from tests.cifar_files import write_official


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("as_tar", [False, True])
def test_official_reader_on_synthetic_layout(tmp_path, name, as_tar):
    path, (x_train, y_train), (x_test, y_test) = write_official(str(tmp_path), name, tar=as_tar)
    for data_dir in (path, str(tmp_path)):  # the archive/folder itself, or the directory holding it
        dataset = data.load_dataset(name, data_dir, download=False)
        np.testing.assert_array_equal(dataset.train.images, x_train)
        np.testing.assert_array_equal(dataset.train.labels, y_train)
        np.testing.assert_array_equal(dataset.test.images, x_test)
        np.testing.assert_array_equal(dataset.test.labels, y_test)
        assert dataset.train.images.dtype == np.uint8 and dataset.train.images.shape[1:] == (32, 32, 3)
        assert len(dataset.class_names) == dataset.info.num_classes


def test_official_reader_on_real_cifar10(cifar10_dir):
    dataset = data.load_dataset("cifar10", cifar10_dir)
    x_train, x_test = dataset.train.images, dataset.test.images
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(dataset.train.labels).tolist() == [5000] * 10
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
    assert dataset.class_names[:2] == ("airplane", "automobile")
    # Channel means of the published statistics (make_cifar10's copy matches them to 1e-4).
    np.testing.assert_allclose(x_train.reshape(-1, 3).mean(0) / 255, dataset.info.mean, atol=2e-3)
    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    if os.path.exists(os.path.join(shared, "cifar10_jpeg.npz")):
        npz = np.load(os.path.join(shared, "cifar10_jpeg.npz"))
        # Images known to be the exact originals, pixel for pixel (RGB planes decoded correctly).
        np.testing.assert_array_equal(x_train[:4000], npz["x_train_exact_0_3999"])
        np.testing.assert_array_equal(x_test[:1000], npz["x_test_exact_0_999"])
        np.testing.assert_array_equal(dataset.test.labels, npz["y_test"])


def test_no_data_error_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(data.DataNotFoundError) as error:
        data.load_dataset("cifar10", str(tmp_path), download=False)
    message = str(error.value)
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message
    assert "--data_dir" in message and "--nodownload" in message
    assert "Keras cache" in message


def test_missing_or_corrupt_files_are_named(tmp_path):
    path, _, _ = write_official(str(tmp_path))
    os.remove(os.path.join(path, "data_batch_3"))
    with pytest.raises(data.DataFormatError, match="missing data_batch_3"):
        data.load_dataset("cifar10", path, download=False)
    with open(os.path.join(path, "data_batch_3"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(data.DataFormatError, match="data_batch_3"):
        data.load_dataset("cifar10", path, download=False)
    with open(os.path.join(path, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(data.DataFormatError, match=r"data_batch_3: expected data \[N, 3072\]"):
        data.load_dataset("cifar10", path, download=False)
    bad_tar = tmp_path / "other" / "cifar-10-python.tar.gz"
    bad_tar.parent.mkdir()
    bad_tar.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(data.DataFormatError, match="cannot read the archive"):
        data.load_dataset("cifar10", str(bad_tar), download=False)


def test_validation_split_is_held_out_seeded_and_disjoint(tmp_path):
    path, (x_train, _), (x_test, _) = write_official(str(tmp_path), per_file=40)
    arrays = data.load_dataset("cifar10", path, download=False)
    splits = data.split(arrays, val_size=30, split_seed=1)
    assert len(splits.val) == 30 and len(splits.train) == 170
    train_rows = {x.tobytes() for x in splits.train.images}
    assert not any(x.tobytes() in train_rows for x in splits.val.images)
    np.testing.assert_array_equal(splits.val.images, x_train[splits.val_indices])
    np.testing.assert_array_equal(splits.test.images, x_test)  # the test split is untouched
    again = data.split(arrays, val_size=30, split_seed=1)
    np.testing.assert_array_equal(again.val_indices, splits.val_indices)
    assert not np.array_equal(data.split(arrays, 30, split_seed=2).val_indices, splits.val_indices)
    assert len(data.split(arrays, 30, train_examples=50).train) == 50
    with pytest.raises(ValueError, match="val_size"):
        data.split(arrays, val_size=200)


def test_pipelines_give_unit_range_floats_and_augment_per_image():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    y = np.arange(64) % 10
    batch_x, batch_y = next(iter(data.train_dataset(data.Examples(y, images=x), (32, 32, 3), 16, augment=True, seed=0)))
    assert batch_x.shape == (16, 32, 32, 3) and batch_x.dtype.name == "float32"
    assert 0.0 <= float(np.min(batch_x)) and float(np.max(batch_x)) <= 1.0
    # Each augmented image is a shifted (and maybe mirrored) copy of its source with zero padding:
    # find its source among the originals by label and check one crop/flip explains it.
    sources = x.astype(np.float32) / 255
    offsets = set()
    for image, label in zip(np.asarray(batch_x), np.asarray(batch_y)):
        padded = np.pad(sources[y == label], ((0, 0), (4, 4), (4, 4), (0, 0)))
        found = None
        for i in range(8 + 1):
            for j in range(8 + 1):
                crops = padded[:, i : i + 32, j : j + 32]
                for flip in (False, True):
                    candidate = crops[:, :, ::-1] if flip else crops
                    if np.any(np.all(np.abs(candidate - image) < 1e-6, axis=(1, 2, 3))):
                        found = (i, j)
        assert found is not None, "augmented image is not a pad-crop-flip of a source image"
        offsets.add(found)
    assert len(offsets) > 3, "crop offsets differ between images of one batch"
    eval_x, eval_y = next(iter(data.eval_dataset(x, y, 64)))
    np.testing.assert_allclose(np.asarray(eval_x), x / 255, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(eval_y), y)


def test_every_iterator_over_the_training_stream_reads_the_same_batches():
    """Epoch e of the training stream is a permutation of the split drawn from (seed, e) alone, so
    every iterator over one dataset reads the same batches. Keras and MirroredStrategy create more
    than one iterator over it; with a shuffle that reshuffled for each new iterator, which
    permutation training read depended on timing (two mirrored runs with one seed trained on
    different batches, seen as a flaky cluster-vs-mirrored test)."""
    examples = data.Examples(np.arange(20), images=np.zeros((20, 32, 32, 3), dtype=np.uint8))
    stream = data.train_dataset(examples, (32, 32, 3), 5, augment=False, seed=3)

    def three_epochs(dataset):
        iterator = iter(dataset)
        return np.concatenate([next(iterator)[1].numpy() for _ in range(12)]).reshape(3, 20)

    first = three_epochs(stream)
    np.testing.assert_array_equal(three_epochs(stream), first)
    for epoch in first:
        assert sorted(epoch) == list(range(20)), "an epoch is a permutation of the split"
    assert not np.array_equal(first[0], first[1]), "reshuffled between epochs"
    other_seed = three_epochs(data.train_dataset(examples, (32, 32, 3), 5, augment=False, seed=4))
    assert not np.array_equal(other_seed, first)


def test_augmentation_is_a_function_of_the_seed_and_the_place_in_the_stream():
    """Each image's crop and flip come from (seed, its place in the stream) alone, so the stream is
    the same however many threads the parallel map runs on and in whatever order they finish
    (a stateful generator shared by parallel calls made cluster and mirrored runs differ under load)."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    examples = data.Examples(np.arange(48) % 10, images=rng.integers(0, 256, size=(48, 32, 32, 3), dtype=np.uint8))
    plain = next(iter(data.train_dataset(examples, (32, 32, 3), 24, augment=False, seed=3)))[0].numpy()
    augmented = data.train_dataset(examples, (32, 32, 3), 24, augment=True, seed=3)
    first = next(iter(augmented))[0].numpy()
    expected = [data.PadCropFlip((32, 32, 3))(image, tf.constant([3, k], tf.int64)) for k, image in enumerate(plain)]
    np.testing.assert_array_equal(first, np.stack(expected))
    one_thread = tf.data.Options()
    one_thread.threading.private_threadpool_size = 1
    fresh = data.train_dataset(examples, (32, 32, 3), 24, augment=True, seed=3)  # a new stream: same shuffle
    np.testing.assert_array_equal(next(iter(fresh.with_options(one_thread)))[0].numpy(), first)
    two_views = next(iter(data.train_dataset(examples, (32, 32, 3), 24, augment=True, seed=3, views=2)))[0]
    assert not np.array_equal(two_views[0].numpy(), two_views[1].numpy())  # two draws per image
