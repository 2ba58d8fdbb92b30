"""The data settings of a training run (flags --dataset, --data_dir, --batch_size, ...)."""

import dataclasses
from typing import Optional

from robustcl.data.datasets import DATASETS
from robustcl.settings import check_fields, option


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = option("cifar10", "The dataset.", choices=DATASETS)
    data_dir: Optional[str] = option(
        None,
        "The dataset's official layout (CIFAR archive or its folder, tiny-imagenet-200/), an "
        "image folder tree (train/<class>/*, val/<class>/*), a directory holding one of them, or a "
        "tfds data directory.",
        exists=True,
    )
    download: bool = option(
        True,
        "Download the data when it is not on disk (tfds, or the official "
        "archive into the Keras cache) if the download host answers; "
        "--nodownload forbids it.",
    )
    image_size: int = option(
        0,
        "Side of the square images for datasets of any size (imagenette, "
        "folder; default 224): the shorter side is resized to it, then the "
        "center is cropped. 0: the dataset's own.",
        minimum=0,
        maximum=4096,
    )
    val_size: int = option(1000, "Training images held out for validation/model selection.", minimum=0)
    train_examples: int = option(0, "Use only this many training images (0: all). For smoke runs.", minimum=0)
    batch_size: int = option(128, "Global training batch size.", minimum=1)
    eval_batch_size: int = option(256, "Global evaluation batch size.", minimum=1)
    augment: bool = option(True, "Pad-4 random crop + horizontal flip.")
    split_seed: int = option(0, "Seed choosing the validation images.")

    def validate(self):
        check_fields(self)
