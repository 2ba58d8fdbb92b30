"""Networks: images in [0, 1] -> {"features", "embedding", "logits"}, normalization inside.

Imports only the bottom layer.
"""

import keras
from keras import layers

from robustcl import hardware
from robustcl.models.settings import EMBEDDING_HEADS
from robustcl.models.backbones import BACKBONES, BatchNormalization, LayerFactory


def build(
    name,
    num_classes,
    mean,
    std,
    image_shape=(32, 32, 3),
    embedding_dim=0,
    embedding_head="mlp",
    synchronized_bn=False,
    fused_batchnorm=None,
):
    """Builds a registered backbone with normalization, an optional projection head and a classifier.

    Args:
      name: registered backbone name (see `BACKBONES.names()`).
      num_classes: classifier width.
      mean, std: per-channel dataset statistics of [0, 1] pixels; normalization is the first layer,
        so attacks and users feed raw [0, 1] images.
      embedding_dim: >0 adds a projection head whose output is "embedding"; 0 makes "embedding" the
        pooled features.
      embedding_head: "mlp" (Dense-ReLU-Dense, the SimCLR/SupCon head) or "linear" (one Dense, as
        MOREL's feat_layer).
      synchronized_bn: BatchNorm statistics over the global batch under tf.distribute.
      fused_batchnorm: BatchNorm by TensorFlow's fused kernel (backbones.BatchNormalization, same
        variables and results as Keras's layer) or not; None: where it measured faster on this
        hardware (hardware.Hardware.fused_batchnorm).
    Returns:
      A keras.Model whose outputs are a dict of float32 tensors: features [B, F], embedding [B, E],
      logits [B, num_classes]. The classifier reads the features, not the embedding.
    """
    backbone = BACKBONES.get(name)
    images = keras.Input(image_shape, name="images", dtype="float32")
    variance = [s * s for s in std]
    x = layers.Normalization(mean=list(mean), variance=variance, name="normalize")(images)
    if fused_batchnorm is None:
        fused_batchnorm = hardware.detect().fused_batchnorm
    features = backbone(x, LayerFactory(synchronized_bn, fused_batchnorm))
    EMBEDDING_HEADS.check(embedding_head)
    if embedding_dim:
        hidden = features
        if embedding_head == "mlp":
            hidden = layers.Dense(features.shape[-1], activation="relu", name="head_hidden")(features)
        embedding = layers.Dense(embedding_dim, name="head_embedding")(hidden)
    else:
        embedding = features
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(features)
    # Cast in float32 layers so losses, attacks and exports see float32 under mixed precision.
    outputs = {
        "features": layers.Activation("linear", dtype="float32", name="features")(features),
        "embedding": layers.Activation("linear", dtype="float32", name="embedding")(embedding),
        "logits": logits,
    }
    return keras.Model(images, outputs, name=name)


def forward_flops(network):
    """Floating-point operations (multiply and add counted apart) of one image's forward pass
    through the network's convolutions and dense layers; the rest (BatchNorm, activations, pooling)
    is under 1% of a ResNet's and left out. Used to state throughput as a fraction of a peak."""
    total = 0
    for layer in network.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            total += 2 * height * width * kernel_h * kernel_w * channels_in * channels_out
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def register(name):
    """Registers a backbone under `name`: a function (x, layer_factory) -> pooled features [B, F],
    where x is the normalized image batch and layer_factory (a LayerFactory) makes the
    convolutions and BatchNorms (so --sync_batchnorm applies). Public: a user's module registers
    its backbones with it (scripts/train.py --extra_modules=MODULE --model=NAME)."""
    return BACKBONES.register(name)


__all__ = [
    "BACKBONES",
    "EMBEDDING_HEADS",
    "BatchNormalization",
    "LayerFactory",
    "build",
    "forward_flops",
    "register",
]
