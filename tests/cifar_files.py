"""Writes small synthetic datasets in the official CIFAR "python version" layout."""

import os
import pickle
import tarfile

import numpy as np

from robustcl.data.formats import CIFAR10, CIFAR100


def write_official(root, name="cifar10", per_file=20, seed=0, tar=False):
    """Writes <root>/<folder>/ (and <root>/<archive> with tar=True); returns (path, images, labels).

    images/labels are the arrays in reading order: training files, then the test file.
    """
    info = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, info.folder)
    os.makedirs(folder, exist_ok=True)
    images, labels = {}, {}
    for file_name in (*info.train_files, info.test_file):
        n = per_file * (5 if name == "cifar100" and file_name == "train" else 1)
        x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, info.num_classes, size=n)
        batch = {
            b"data": x.transpose(0, 3, 1, 2).reshape(n, 3072),
            info.label_key: y.tolist(),
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        if name == "cifar100":
            batch[b"coarse_labels"] = (y // 5).tolist()
        with open(os.path.join(folder, file_name), "wb") as f:
            pickle.dump(batch, f)
        images[file_name], labels[file_name] = x, y
    meta = {info.names_key: [f"class{i}".encode() for i in range(info.num_classes)]}
    if name == "cifar100":
        meta[b"coarse_label_names"] = [f"super{i}".encode() for i in range(20)]
    with open(os.path.join(folder, info.meta_file), "wb") as f:
        pickle.dump(meta, f)
    path = folder
    if tar:
        path = os.path.join(root, info.archive)
        with tarfile.open(path, "w:gz") as archive:
            archive.add(folder, arcname=info.folder)
    x_train = np.concatenate([images[f] for f in info.train_files])
    y_train = np.concatenate([labels[f] for f in info.train_files])
    return path, (x_train, y_train), (images[info.test_file], labels[info.test_file])
