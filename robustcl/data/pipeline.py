"""tf.data pipelines: float32 images in [0, 1], NHWC; augmentation with Keras preprocessing layers."""

import keras
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


class PadCropFlip:
    """The standard CIFAR augmentation: zero-pad 4 pixels, random crop back, random horizontal flip.

    Applied per image: Keras' RandomCrop draws one offset per call, so calling it on a batch would
    crop every image of the batch alike. Layers are float32 whatever the global precision policy.
    """

    def __init__(self, image_shape, padding=4, seed=None):
        height, width, _ = image_shape
        self.padding = padding
        self.crop = keras.layers.RandomCrop(height, width, seed=seed, dtype="float32")
        self.flip = keras.layers.RandomFlip(
            "horizontal", seed=None if seed is None else seed + 1, dtype="float32")

    def __call__(self, image):
        p = self.padding
        image = tf.pad(image, [[p, p], [p, p], [0, 0]])
        return self.flip(self.crop(image, training=True), training=True)


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)


def train_dataset(x, y, batch_size, augment=True, seed=0, views=1):
    """An endless, shuffled, augmented stream of full batches (Keras counts epochs by steps).

    views=2 yields ((view1, view2), labels): two independent augmentations of each image, for
    methods that contrast augmented views. The uint8 arrays are already in memory, so the pipeline
    caches nothing itself; decoding and augmentation run in parallel and the result is prefetched
    so the step never waits.
    """
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views}")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE)
    augmentation = PadCropFlip(x.shape[1:], seed=seed) if augment else (lambda image: image)
    if views == 2:
        ds = ds.map(lambda image, label: ((augmentation(image), augmentation(image)), label),
                    num_parallel_calls=AUTOTUNE)
    elif augment:
        ds = ds.map(lambda image, label: (augmentation(image), label), num_parallel_calls=AUTOTUNE)
    return _shard_by_element(ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE))


def _shard_by_element(ds):
    # Under --strategy=multi_worker each worker keeps its part of every global batch. The arrays are
    # in memory, so there are no files to divide among workers; saying so up front skips
    # TensorFlow's failed attempt at file sharding (and its warning).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def eval_dataset(x, y, batch_size):
    """Evaluation batches in order; decoded once and cached (validation and test sets are small)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return _shard_by_element(ds.map(_to_float, num_parallel_calls=AUTOTUNE).cache().prefetch(AUTOTUNE))
