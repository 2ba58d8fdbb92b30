"""Data: official CIFAR archives/folders and tfds -> uint8 arrays -> tf.data of [0, 1] floats."""

from robustcl.data.datasets import (DATASETS, DataFormatError, DataNotFoundError, Splits,
                                    dataset_info, load, load_arrays, read_official, split)
from robustcl.data.pipeline import PadCropFlip, eval_dataset, train_dataset

__all__ = ["DATASETS", "DataFormatError", "DataNotFoundError", "Splits", "dataset_info", "load",
           "load_arrays", "read_official", "split", "PadCropFlip", "eval_dataset", "train_dataset"]
