"""Data: official layouts, image folders and tfds -> Examples (uint8 in memory, or image files) ->
tf.data of [0, 1] floats.

Imports only the bottom layer (registry, settings, files).
"""

from robustcl.data.datasets import (
    DATASETS,
    Dataset,
    DatasetInfo,
    Splits,
    channel_statistics,
    dataset_spec,
    first_test_images,
    image_size_of,
    in_memory,
    load,
    load_dataset,
    network_reachable,
    split,
)
from robustcl.data.formats import DataFormatError, DataNotFoundError, Examples
from robustcl.data.pipeline import PadCropFlip, eval_dataset, read_images, train_dataset

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DataFormatError",
    "DataNotFoundError",
    "Examples",
    "Splits",
    "channel_statistics",
    "dataset_spec",
    "first_test_images",
    "image_size_of",
    "in_memory",
    "load",
    "load_dataset",
    "network_reachable",
    "split",
    "PadCropFlip",
    "eval_dataset",
    "read_images",
    "train_dataset",
]
