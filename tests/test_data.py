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
        arrays = data.load_arrays(name, data_dir)
        np.testing.assert_array_equal(arrays.x_train, x_train)
        np.testing.assert_array_equal(arrays.y_train, y_train)
        np.testing.assert_array_equal(arrays.x_test, x_test)
        np.testing.assert_array_equal(arrays.y_test, y_test)
        assert arrays.x_train.dtype == np.uint8 and arrays.x_train.shape[1:] == (32, 32, 3)
        assert len(arrays.class_names) == arrays.info.num_classes


def test_official_reader_on_real_cifar10(cifar10_dir):
    arrays = data.load_arrays("cifar10", cifar10_dir)
    assert arrays.x_train.shape == (50000, 32, 32, 3) and arrays.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(arrays.y_train).tolist() == [5000] * 10
    assert np.bincount(arrays.y_test).tolist() == [1000] * 10
    assert arrays.class_names[:2] == ("airplane", "automobile")
    # Channel means of the published statistics (make_cifar10's copy matches them to 1e-4).
    np.testing.assert_allclose(arrays.x_train.reshape(-1, 3).mean(0) / 255, arrays.info.mean, atol=2e-3)
    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    if os.path.exists(os.path.join(shared, "cifar10_jpeg.npz")):
        npz = np.load(os.path.join(shared, "cifar10_jpeg.npz"))
        # Images known to be the exact originals, pixel for pixel (RGB planes decoded correctly).
        np.testing.assert_array_equal(arrays.x_train[:4000], npz["x_train_exact_0_3999"])
        np.testing.assert_array_equal(arrays.x_test[:1000], npz["x_test_exact_0_999"])
        np.testing.assert_array_equal(arrays.y_test, npz["y_test"])


def test_no_data_error_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(data.DataNotFoundError) as error:
        data.load_arrays("cifar10", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message
    assert "--data_dir" in message and "--download" in message


def test_missing_or_corrupt_files_are_named(tmp_path):
    path, _, _ = write_official(str(tmp_path))
    os.remove(os.path.join(path, "data_batch_3"))
    with pytest.raises(data.DataFormatError, match="missing data_batch_3"):
        data.load_arrays("cifar10", path)
    with open(os.path.join(path, "data_batch_3"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(data.DataFormatError, match="data_batch_3"):
        data.load_arrays("cifar10", path)
    with open(os.path.join(path, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(data.DataFormatError, match=r"data_batch_3: expected data \[N, 3072\]"):
        data.load_arrays("cifar10", path)
    bad_tar = tmp_path / "other" / "cifar-10-python.tar.gz"
    bad_tar.parent.mkdir()
    bad_tar.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(data.DataFormatError, match="cannot read the archive"):
        data.load_arrays("cifar10", str(bad_tar))


def test_validation_split_is_held_out_seeded_and_disjoint(tmp_path):
    path, (x_train, _), (x_test, _) = write_official(str(tmp_path), per_file=40)
    arrays = data.load_arrays("cifar10", path)
    splits = data.split(arrays, val_size=30, split_seed=1)
    assert len(splits.val[0]) == 30 and len(splits.train[0]) == 170
    train_rows = {x.tobytes() for x in splits.train[0]}
    assert not any(x.tobytes() in train_rows for x in splits.val[0])
    np.testing.assert_array_equal(splits.val[0], x_train[splits.val_indices])
    np.testing.assert_array_equal(splits.test[0], x_test)  # the test split is untouched
    again = data.split(arrays, val_size=30, split_seed=1)
    np.testing.assert_array_equal(again.val_indices, splits.val_indices)
    assert not np.array_equal(data.split(arrays, 30, split_seed=2).val_indices, splits.val_indices)
    assert len(data.split(arrays, 30, train_examples=50).train[0]) == 50
    with pytest.raises(ValueError, match="val_size"):
        data.split(arrays, val_size=200)


def test_pipelines_give_unit_range_floats_and_augment_per_image():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    y = np.arange(64) % 10
    batch_x, batch_y = next(iter(data.train_dataset(x, y, 16, augment=True, seed=0)))
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
                crops = padded[:, i:i + 32, j:j + 32]
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


def test_tfds_path_reads_prepared_or_downloaded_data(monkeypatch):
    import tensorflow_datasets as tfds

    from robustcl.data import datasets

    with tfds.testing.mock_data(num_examples=12):
        # Not prepared and no --download: no download attempt, one clear error.
        with pytest.raises(data.DataNotFoundError, match="--download"):
            data.load_arrays("cifar10", None, download=False)
        downloaded = data.load_arrays("cifar10", None, download=True)
        monkeypatch.setattr(datasets, "_tfds_prepared", lambda builder: True)
        prepared = data.load_arrays("cifar10", None, download=False)
    for arrays in (downloaded, prepared):
        assert arrays.source.startswith("tfds")
        assert arrays.x_train.shape == (12, 32, 32, 3) and arrays.x_train.dtype == np.uint8
        assert arrays.y_train.dtype == np.int32 and arrays.x_test.shape == (12, 32, 32, 3)
        assert len(arrays.class_names) == 10
