"""Writes small synthetic image datasets as files: a folder tree and the tiny-imagenet-200 layout."""

import os

import numpy as np
from PIL import Image


def _save(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)


def _image(rng, label, height, width):
    """A flat colour per class (so decoding and labels can be checked) with mild noise."""
    colour = np.array([(37 * label) % 256, (91 * label + 40) % 256, (53 * label + 90) % 256])
    noise = rng.integers(-8, 9, size=(height, width, 3))
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


def write_folder_tree(root, classes=("cat", "dog", "emu"), per_class=(12, 4), size=(40, 56), seed=0, extension="png"):
    """root/train/<class>/*.{extension} and root/val/<class>/*; returns {split: [(path, label)]}."""
    rng = np.random.default_rng(seed)
    written = {"train": [], "val": []}
    for split, count in zip(("train", "val"), per_class):
        for label, name in enumerate(classes):
            for i in range(count):
                path = os.path.join(root, split, name, f"{i:03d}.{extension}")
                _save(path, _image(rng, label, *size))
                written[split].append((path, label))
    return written


def write_tiny_imagenet(root, wnids=("n01443537", "n01629819", "n01641577"), per_class=40, val=30, seed=0):
    """The official layout: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and
    val/val_annotations.txt. Returns (path, val labels in annotation order)."""
    rng = np.random.default_rng(seed)
    path = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    with open(os.path.join(path, "words.txt"), "w") as f:
        for i, wnid in enumerate(wnids):
            f.write(f"{wnid}\tthing{i}, other name\n")
        f.write("n99999999\tunused\n")
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            _save(os.path.join(path, "train", wnid, "images", f"{wnid}_{i}.JPEG"), _image(rng, label, 64, 64))
    labels = rng.integers(0, len(wnids), size=val)
    os.makedirs(os.path.join(path, "val"), exist_ok=True)
    with open(os.path.join(path, "val", "val_annotations.txt"), "w") as f:
        for i, label in enumerate(labels):
            _save(os.path.join(path, "val", "images", f"val_{i}.JPEG"), _image(rng, label, 64, 64))
            f.write(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    return path, labels
