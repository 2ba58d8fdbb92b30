"""tf.data pipelines: float32 images in [0, 1], NHWC; augmentation with Keras preprocessing layers.

Images in memory (uint8 arrays) are sliced; image files stream from disk: read, decoded and fitted
to the run's image size in parallel, then augmented and prefetched like the arrays, so only the
files' paths are held in memory.
"""

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


class PadCropFlip:
    """The standard CIFAR augmentation: zero-pad 4 pixels, random crop back, random horizontal flip.

    Applied per image, with stateless draws from the image's own seed: a stateful generator shared
    by the parallel calls of a map would hand out its draws in scheduling order, so two runs of one
    seed (or a cluster and a mirrored run) could augment differently under another load.
    """

    def __init__(self, image_shape, padding=None):
        height, width, channels = image_shape
        self.shape = (height, width, channels)
        # 4 pixels at CIFAR's 32, the same eighth of the side at larger sizes.
        self.padding = max(4, height // 8) if padding is None else padding

    def __call__(self, image, seed):
        """image [H, W, C] float, seed int64 [2] -> the augmented image."""
        p = self.padding
        image = tf.pad(image, [[p, p], [p, p], [0, 0]])
        crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
        image = tf.image.stateless_random_crop(image, self.shape, seed=crop_seed)
        return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def fit_to_size(image, size):
    """uint8 [H, W, C] -> uint8 [size, size, 3]: the shorter side resized to `size` (bilinear,
    antialiased), then the center square. An image already size x size passes unchanged."""
    image = tf.convert_to_tensor(image)
    # Grey -> RGB, RGBA -> RGB (tfds and decode_image give 3 channels; user arrays may not).
    image = tf.cond(
        tf.equal(tf.shape(image)[-1], 1), lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3]
    )
    shape = tf.shape(image)
    height, width = shape[0], shape[1]

    def resize():
        scale = tf.cast(size, tf.float32) / tf.cast(tf.minimum(height, width), tf.float32)
        new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32))
        new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32))
        resized = tf.image.resize(image, [new_h, new_w], antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        cropped = resized[top : top + size, left : left + size]
        return tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)

    same = tf.logical_and(tf.equal(height, size), tf.equal(width, size))
    fitted = tf.cond(same, lambda: tf.cast(image, tf.uint8), resize)
    return tf.ensure_shape(fitted, [size, size, 3])


def decode_to_size(path, size):
    """An image file (JPEG, PNG, BMP, GIF: first frame) -> uint8 [size, size, 3]."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return fit_to_size(image, size)


def _epoch_permutations(size, seed):
    """An endless stream of indices into `size` examples: epoch e is the permutation drawn from
    (seed, e) alone. Every iterator over it yields the same stream, however many iterators Keras and
    a distribution strategy create and in whatever order. (A reshuffle_each_iteration shuffle gives
    each new iterator the next permutation: under MirroredStrategy which one training saw depended
    on timing, so two runs with the same seed trained on different batches.)"""
    indices = tf.range(size, dtype=tf.int64)
    return tf.data.Dataset.counter().flat_map(
        lambda epoch: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(indices, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        )
    )


def _images_and_labels(examples, image_size, shuffle_seed=None):
    """(uint8 image, int32 label) elements: sliced from memory or streamed from files, in order. With
    a shuffle seed, an endless stream of seeded permutations (_epoch_permutations: of indices, so
    nothing holds a shuffle buffer of decoded images)."""
    source = examples.images if examples.in_memory else examples.files
    labels = examples.labels.astype(np.int32)
    if shuffle_seed is None:
        ds = tf.data.Dataset.from_tensor_slices((source, labels))
    else:
        source, labels = tf.constant(source), tf.constant(labels)
        # Gathered 256 at a time: one gather per image costs a third of the plain stream's speed.
        ds = (
            _epoch_permutations(len(examples), shuffle_seed)
            .batch(256)
            .map(lambda index: (tf.gather(source, index), tf.gather(labels, index)), num_parallel_calls=AUTOTUNE)
            .unbatch()
        )
    if not examples.in_memory:
        # In order (the map's default), so the stream is the seed's whatever the decoding times.
        ds = ds.map(lambda path, label: (decode_to_size(path, image_size), label), num_parallel_calls=AUTOTUNE)
    return ds


def read_images(examples, image_size, batch_size=256):
    """Yields the examples' images as uint8 numpy batches, in order."""
    ds = _images_and_labels(examples, image_size).batch(batch_size).prefetch(AUTOTUNE)
    for images, _ in ds.as_numpy_iterator():
        yield images


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)


def train_dataset(examples, image_shape, batch_size, augment=True, seed=0, views=1):
    """An endless, shuffled, augmented stream of full batches (Keras counts epochs by steps).

    views=2 yields ((view1, view2), labels): two independent augmentations of each image, for
    methods that contrast augmented views. Decoding and augmentation run in parallel and the
    result is prefetched so the step does not wait (bench/input_pipeline.py measures it).
    """
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views}")
    ds = _images_and_labels(examples, image_shape[0], shuffle_seed=seed)
    ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE)
    augmentation = PadCropFlip(image_shape) if augment else (lambda image, view_seed: image)

    def view(index, image, number):
        # The image's place in the (seeded, endless) stream and the view's number seed its draws.
        return augmentation(image, tf.stack([tf.constant(seed or 0, tf.int64), index * views + number]))

    if views == 2 or augment:
        ds = ds.enumerate().map(
            lambda index, example: (
                (view(index, example[0], 0), view(index, example[0], 1)) if views == 2 else view(index, example[0], 0),
                example[1],
            ),
            num_parallel_calls=AUTOTUNE,
        )
    return _shard_by_element(ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE))


def _shard_by_element(ds):
    # Under --strategy=multi_worker each worker keeps its part of every global batch. The pipeline
    # starts from arrays or a list of paths, not from a file-reading dataset, so there are no files
    # for TensorFlow to divide among workers; saying so up front skips its failed attempt at file
    # sharding (and its warning). (Each worker decodes every streamed file and keeps its share.)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def eval_dataset(x, y, batch_size):
    """Evaluation batches in order; decoded once and cached (validation and test sets are small)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return _shard_by_element(ds.map(_to_float, num_parallel_calls=AUTOTUNE).cache().prefetch(AUTOTUNE))
