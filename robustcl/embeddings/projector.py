"""TensorBoard projector data for clean and adversarial embeddings, written by this project.

Keras 3's TensorBoard callback writes nothing the projector can read, so for a fixed set of
validation images this module writes, into one TensorBoard run directory (`<model_dir>/projector`):
  - a checkpoint holding one variable per written epoch, `epoch_NNN`, of shape [2N, D]: rows 0..N-1
    the clean embeddings, rows N..2N-1 the embeddings of their PGD adversarial versions;
  - `metadata_epoch_NNN.tsv` with a header row and columns class, label, view (clean/adversarial),
    predicted, correct, index (the image's index in the original training split);
  - `sprite_<hash>.png`: the N thumbnails, twice (clean rows and adversarial rows show the clean
    image: an 8/255 perturbation is invisible at thumbnail size, so one sprite serves every epoch
    of the same images; the name is a hash of the thumbnails, so another image set, e.g. the test
    images `scripts/evaluate.py` embeds as `test_best`, gets its own);
  - `projector_config.pbtxt` listing every epoch's tensor;
  - an events file with the embedding-space scalars (the projector only looks inside runs that
    have one) and `projection_epoch_NNN.png`, a 2-D projection for reports.
"""

import hashlib
import math
import os

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorboard.plugins import projector

from robustcl.attacks import OBJECTIVES, attack_from_config
from robustcl.embeddings.space import embedding_space_stats

METADATA_COLUMNS = ("class", "label", "view", "predicted", "correct", "index")


def tensor_name(tag):
    return f"{tag}/.ATTRIBUTES/VARIABLE_VALUE"


def embed_clean_and_adversarial(network, x, y, attack_config, batch_size=256, seed=0):
    """Embeddings and predictions of x and of its PGD adversarial version (inference mode)."""
    attack = attack_from_config(attack_config)
    objective = OBJECTIVES.get("ce")
    parts = {"clean": [], "adversarial": [], "clean_pred": [], "adversarial_pred": []}
    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start : start + batch_size], tf.float32)
        yb = tf.constant(y[start : start + batch_size], tf.int32)
        clean = network(xb, training=False)
        x_adv = attack(
            lambda z: objective(network(z, training=False), yb, clean), xb, tf.constant([seed, start], tf.int64)
        )
        adversarial = network(x_adv, training=False)
        for view, outputs in (("clean", clean), ("adversarial", adversarial)):
            parts[view].append(outputs["embedding"].numpy())
            parts[f"{view}_pred"].append(np.argmax(outputs["logits"].numpy(), -1))
    return {k: np.concatenate(v) for k, v in parts.items()}


def metadata_rows(labels, indices, class_names, clean_pred, adversarial_pred):
    rows = []
    for view, predictions in (("clean", clean_pred), ("adversarial", adversarial_pred)):
        for label, index, predicted in zip(labels, indices, predictions):
            rows.append(
                (class_names[label], str(label), view, class_names[predicted], str(int(predicted == label)), str(index))
            )
    return rows


SPRITE_MAX_SIDE = 8192  # the projector does not load a larger sprite image
THUMBNAIL_MAX_SIDE = 64


def thumbnail_side(n):
    """The largest thumbnail side for n images (2n thumbnails in a square sprite)."""
    return min(THUMBNAIL_MAX_SIDE, SPRITE_MAX_SIDE // math.ceil(math.sqrt(2 * n)))


def thumbnails_of(x):
    """Images in [0, 1] -> uint8 thumbnails no larger than 64 px, and small enough that the sprite
    of both views (2N thumbnails) fits the projector's 8192 px limit."""
    images = np.clip(np.round(np.asarray(x) * 255), 0, 255).astype(np.uint8)
    n, height, width = images.shape[:3]
    side = thumbnail_side(n)
    if max(height, width) <= side:
        return images
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)) for image in images])


def write_sprite(path, images):
    """Images [N, H, W, 3] uint8 -> one PNG grid, row-major, for the projector."""
    n, height, width = images.shape[:3]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * height, columns * width, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    Image.fromarray(grid).save(path)


def _previous_tensors(run_dir):
    """{tag: array} of the epochs already in the run's checkpoint (a resumed run keeps them)."""
    latest = tf.train.latest_checkpoint(run_dir)
    if latest is None:
        return {}
    reader = tf.train.load_checkpoint(latest)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    names = [key[: -len(suffix)] for key in reader.get_variable_to_shape_map() if key.endswith(suffix)]
    return {
        name: reader.get_tensor(tensor_name(name))
        for name in names
        if os.path.exists(os.path.join(run_dir, f"metadata_{name}.tsv"))
    }  # not save_counter


def write_epoch(run_dir, tag, embeddings, rows, thumbnails):
    """Adds one epoch's [2N, D] embeddings and metadata to the projector run at run_dir."""
    os.makedirs(run_dir, exist_ok=True)
    if len(rows) != len(embeddings):
        raise ValueError(f"{len(rows)} metadata rows for {len(embeddings)} embeddings")
    with open(os.path.join(run_dir, f"metadata_{tag}.tsv"), "w") as f:
        f.write("\t".join(METADATA_COLUMNS) + "\n")
        f.writelines("\t".join(row) + "\n" for row in rows)
    sprite_name = f"sprite_{hashlib.sha1(thumbnails.tobytes()).hexdigest()[:12]}.png"
    if not os.path.exists(os.path.join(run_dir, sprite_name)):
        write_sprite(os.path.join(run_dir, sprite_name), np.concatenate([thumbnails, thumbnails]))
    with open(os.path.join(run_dir, f"sprite_of_{tag}.txt"), "w") as f:
        f.write(sprite_name)

    tensors = _previous_tensors(run_dir)
    tensors[tag] = np.asarray(embeddings, np.float32)
    checkpoint = tf.train.Checkpoint(**{name: tf.Variable(value) for name, value in tensors.items()})
    tf.train.CheckpointManager(checkpoint, run_dir, max_to_keep=1, checkpoint_name="embeddings").save()

    config = projector.ProjectorConfig()
    for name in sorted(tensors):
        embedding = config.embeddings.add()
        embedding.tensor_name = tensor_name(name)
        embedding.metadata_path = f"metadata_{name}.tsv"
        with open(os.path.join(run_dir, f"sprite_of_{name}.txt")) as f:
            embedding.sprite.image_path = f.read().strip()
        embedding.sprite.single_image_dim.extend(list(thumbnails.shape[1:3]))
    projector.visualize_embeddings(run_dir, config)


def plot_projection(path, clean, adversarial, labels, class_names, title=""):
    """A PNG of a 2-D projection (t-SNE where scikit-learn is installed, else PCA) of the clean
    (dots) and adversarial (crosses) embeddings, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = np.concatenate([clean, adversarial]).astype(np.float64)
    try:
        from sklearn.manifold import TSNE

        xy = TSNE(
            n_components=2, init="pca", random_state=0, perplexity=min(30, max(2, len(points) // 4))
        ).fit_transform(points)
        method = "t-SNE"
    except ImportError:
        centered = points - points.mean(0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        xy = centered @ vt[:2].T
        method = "PCA"
    n = len(clean)
    figure, axes = plt.subplots(figsize=(7, 6), dpi=100)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for label in np.unique(labels):
        mask = labels == label
        color = cmap(label % cmap.N)
        axes.scatter(*xy[:n][mask].T, s=8, color=color, marker="o", label=class_names[label])
        axes.scatter(*xy[n:][mask].T, s=12, color=color, marker="x", linewidths=0.8)
    axes.set_title(f"{title} ({method}; dots clean, crosses adversarial)")
    if len(class_names) <= 10:
        axes.legend(markerscale=2, fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return method


def write_projector_epoch(
    run_dir, tag, network, x, y, indices, class_names, attack_config, step, batch_size=256, seed=0
):
    """Everything for one epoch: embeddings, metadata, sprite, config, scalars, PNG. Returns stats."""
    views = embed_clean_and_adversarial(network, x, y, attack_config, batch_size, seed)
    embeddings = np.concatenate([views["clean"], views["adversarial"]])
    rows = metadata_rows(y, indices, class_names, views["clean_pred"], views["adversarial_pred"])
    write_epoch(run_dir, tag, embeddings, rows, thumbnails_of(x))
    stats = embedding_space_stats(views["clean"], views["adversarial"], y)
    stats["clean_accuracy"] = float(np.mean(views["clean_pred"] == y))
    stats["robust_accuracy"] = float(np.mean(views["adversarial_pred"] == y))
    writer = tf.summary.create_file_writer(run_dir)
    with writer.as_default():
        for name, value in stats.items():
            tf.summary.scalar(f"embedding/{name}", value, step=step)
        tf.summary.scalar("attack/eps", attack_config.eps, step=step)
    writer.close()
    plot_projection(
        os.path.join(run_dir, f"projection_{tag}.png"),
        views["clean"],
        views["adversarial"],
        np.asarray(y),
        class_names,
        title=tag,
    )
    return stats
