"""Backbones as Keras functional graphs: images (already normalized) -> pooled features.

CIFAR-style networks (3x3 stem, no downsampling before the first stage) suit 32 and 64 px inputs
(Tiny-ImageNet robust training uses them at 64 px); `resnet18_imagenet` and `resnet50` have the
ImageNet stem (7x7 stride-2 convolution and 3x3 stride-2 max pooling) for 160-224 px inputs. Every
backbone ends in global average pooling, so any input size works.

Layer settings follow the PyTorch code the published robust-training results come from: BatchNorm
momentum 0.9 (torch's 0.1) and epsilon 1e-5, He-normal (fan-out) convolution kernels, no conv bias.
"""

import keras
import tensorflow as tf
from keras import layers

from robustcl.registry import Registry

BACKBONES = Registry("model")


def _conv_initializer():
    # A new initializer per layer: an unseeded Keras initializer fixes its seed when constructed, so
    # one shared instance gave every kernel of the same shape the same values (3 of ResNet-18's four
    # 64->64 convs copied the first), and, built at import before keras.utils.set_random_seed, a
    # different seed in every process. Constructed here, each draws its seed from the seeded RNG.
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


@keras.saving.register_keras_serializable(package="robustcl")
class BatchNormalization(layers.BatchNormalization):
    """keras.layers.BatchNormalization computed by TensorFlow's fused kernel (FusedBatchNormV3).

    Keras 3 normalizes with separate ops: a cast of the input to float32, two reductions for the
    moments, the affine transform, a cast back, and as many again in the backward pass. The fused
    kernel made the PreAct ResNet-18 w16 PGD-5 training step 1.25x faster in mixed_bfloat16 and
    1.07x in float32 with oneDNN on AVX-512, 1.05x with oneDNN on an AVX2-only CPU, but 0.90x with
    TensorFlow's Eigen kernels, so models.build uses it where it measured faster
    (hardware.Hardware.fused_batchnorm; docs/results/performance.md).
    Same variables, same semantics (moving variance from the biased batch variance, as Keras keeps
    it), so checkpoints of either layer load into the other; the class keeps Keras's name because
    Keras keys a layer's weights in .weights.h5 and .keras files by its class name. What the fused
    kernel does not cover (synchronized moments, renorm, a mask, float64, inputs not 4-D
    channels-last) takes Keras's path.
    """

    def _fused(self, inputs, mask):
        return (
            not self.synchronized
            and not self.renorm
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = self.moving_mean.shape[0]
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones([channels])
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros([channels])
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the Bessel-corrected batch variance; Keras averages the biased one.
            count = tf.cast(tf.size(inputs) // channels, tf.float32)
            variance = variance * tf.maximum(count - 1.0, 0.0) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance),
                epsilon=self.epsilon,
                is_training=False,
            )
        return tf.cast(outputs, self.compute_dtype)


class LayerFactory:
    """Builds conv and BatchNorm layers with the shared settings (synchronized BN under replicas).

    fused_batchnorm: this module's BatchNormalization (synchronized BN keeps Keras's, whose moments
    the fused kernel cannot gather); False: Keras's own BatchNormalization (as in the plain network
    bench/train_throughput.py holds robustcl's step to). models.build chooses by the hardware."""

    def __init__(self, synchronized_bn=False, fused_batchnorm=True):
        self.synchronized_bn = synchronized_bn
        self.fused_batchnorm = fused_batchnorm

    def conv(self, filters, kernel_size=3, strides=1, name=None):
        return layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=_conv_initializer(),
            name=name,
        )

    def bn(self, name=None):
        fused = self.fused_batchnorm and not self.synchronized_bn
        layer = BatchNormalization if fused else layers.BatchNormalization
        return layer(momentum=0.9, epsilon=1e-5, synchronized=self.synchronized_bn, name=name)


def _basic_block(f, x, filters, strides, name):
    """ResNet v1 basic block (He et al. 2016), as in the CIFAR ResNet-18 of kuangliu/pytorch-cifar."""
    shortcut = x
    y = f.conv(filters, strides=strides, name=f"{name}_conv1")(x)
    y = layers.ReLU()(f.bn(f"{name}_bn1")(y))
    y = f.bn(f"{name}_bn2")(f.conv(filters, name=f"{name}_conv2")(y))
    if strides != 1 or x.shape[-1] != filters:
        shortcut = f.bn(f"{name}_shortcut_bn")(f.conv(filters, 1, strides, name=f"{name}_shortcut_conv")(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _preact_block(f, x, filters, strides, name):
    """Pre-activation block (He et al. 2016b): BN-ReLU before each convolution."""
    out = layers.ReLU()(f.bn(f"{name}_bn1")(x))
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = f.conv(filters, 1, strides, name=f"{name}_shortcut_conv")(out)
    y = f.conv(filters, strides=strides, name=f"{name}_conv1")(out)
    y = layers.ReLU()(f.bn(f"{name}_bn2")(y))
    y = f.conv(filters, name=f"{name}_conv2")(y)
    return layers.Add()([y, shortcut])


def _bottleneck_block(f, x, filters, strides, name):
    """ResNet v1.5 bottleneck (torchvision's ResNet-50): the stride sits on the 3x3 convolution."""
    shortcut = x
    y = layers.ReLU()(f.bn(f"{name}_bn1")(f.conv(filters, 1, name=f"{name}_conv1")(x)))
    y = layers.ReLU()(f.bn(f"{name}_bn2")(f.conv(filters, 3, strides, name=f"{name}_conv2")(y)))
    y = f.bn(f"{name}_bn3")(f.conv(4 * filters, 1, name=f"{name}_conv3")(y))
    if strides != 1 or x.shape[-1] != 4 * filters:
        shortcut = f.bn(f"{name}_shortcut_bn")(f.conv(4 * filters, 1, strides, name=f"{name}_shortcut_conv")(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _imagenet_stem(x, f):
    x = layers.ReLU()(f.bn("stem_bn")(f.conv(64, 7, 2, name="stem_conv")(x)))
    return layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)


def _resnet_stages(x, f, block, blocks_per_stage, width=64):
    stages = [(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)]
    for stage, (filters, strides) in enumerate(stages):
        for i in range(blocks_per_stage[stage]):
            x = block(f, x, filters, strides if i == 0 else 1, f"stage{stage + 1}_block{i + 1}")
    return x


def _resnet18(x, f, block, final_bn_relu, width=64):
    x = f.conv(width, name="stem_conv")(x)
    if not final_bn_relu:  # ResNet v1 normalizes the stem; the pre-activation net does it in blocks.
        x = layers.ReLU()(f.bn("stem_bn")(x))
    x = _resnet_stages(x, f, block, (2, 2, 2, 2), width)
    if final_bn_relu:
        x = layers.ReLU()(f.bn("final_bn")(x))
    return layers.GlobalAveragePooling2D(name="pool")(x)


@BACKBONES.register("resnet18")
def resnet18(x, f):
    return _resnet18(x, f, _basic_block, final_bn_relu=False)


@BACKBONES.register("preact_resnet18")
def preact_resnet18(x, f):
    return _resnet18(x, f, _preact_block, final_bn_relu=True)


@BACKBONES.register("preact_resnet18_w16")
def preact_resnet18_w16(x, f):
    """PreAct ResNet-18 at base width 16 (stages 16-32-64-128, about 0.70M parameters): the
    mid-scale network of the reproduction protocol, a quarter of the width and 1/16 of the
    FLOPs of the full one."""
    return _resnet18(x, f, _preact_block, final_bn_relu=True, width=16)


@BACKBONES.register("resnet18_imagenet")
def resnet18_imagenet(x, f):
    """ResNet-18 as for ImageNet (He et al. 2016; torchvision's resnet18)."""
    x = _resnet_stages(_imagenet_stem(x, f), f, _basic_block, (2, 2, 2, 2))
    return layers.GlobalAveragePooling2D(name="pool")(x)


@BACKBONES.register("resnet50")
def resnet50(x, f):
    """ResNet-50 v1.5 as for ImageNet (torchvision's resnet50, the robust-ImageNet baseline)."""
    x = _resnet_stages(_imagenet_stem(x, f), f, _bottleneck_block, (3, 4, 6, 3))
    return layers.GlobalAveragePooling2D(name="pool")(x)


def _wide_resnet(x, f, depth, widen):
    """WideResNet-depth-widen (Zagoruyko & Komodakis), as used by TRADES, MART and MOREL."""
    if (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
    blocks = (depth - 4) // 6
    x = f.conv(16, name="stem_conv")(x)
    for group, (filters, strides) in enumerate([(16 * widen, 1), (32 * widen, 2), (64 * widen, 2)]):
        for i in range(blocks):
            x = _preact_block(f, x, filters, strides if i == 0 else 1, f"group{group + 1}_block{i + 1}")
    x = layers.ReLU()(f.bn("final_bn")(x))
    return layers.GlobalAveragePooling2D(name="pool")(x)


@BACKBONES.register("wrn34_10")
def wrn34_10(x, f):
    return _wide_resnet(x, f, 34, 10)


@BACKBONES.register("wrn28_10")
def wrn28_10(x, f):
    return _wide_resnet(x, f, 28, 10)


@BACKBONES.register("tiny")
def tiny_cnn(x, f):
    """A 3-conv CNN (about 25k parameters) for tests and smoke runs."""
    for i, (filters, strides) in enumerate([(16, 1), (32, 2), (64, 2)]):
        x = layers.ReLU()(f.bn(f"bn{i + 1}")(f.conv(filters, strides=strides, name=f"conv{i + 1}")(x)))
    return layers.GlobalAveragePooling2D(name="pool")(x)
