"""Any Keras classifier (images in [0, 1] -> logits) as the network a method trains:
images -> {"features", "embedding", "logits"}.

The features are the output of a layer the user names (`embedding_layer`), read while the
classifier runs, so one forward pass gives both and the classifier is called exactly as it would be
alone: Sequential, functional and subclassed models alike, their BatchNorm updates and dropout
included. Where the method declares a projection head (MOREL's linear 128-d one, SupCon's MLP), it
is added here, over the features, and is not part of the classifier: `classifier.save()` saves the
user's model as it was, trained.
"""

import threading

import keras
import numpy as np
import tensorflow as tf

from robustcl.models import keras_models
from robustcl.models.settings import EMBEDDING_HEADS


class ClassifierError(ValueError):
    """The classifier cannot be trained as given; the message names what to change."""


class _LayerOutput:
    """Records what one layer of the classifier returns while `recording()` is active, in this
    thread (tf.distribute runs each replica's step in a thread of its own)."""

    def __init__(self, layer):
        self.layer = layer
        self._local = threading.local()
        original = layer.call

        def call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            if getattr(self._local, "active", False):
                self._local.value = outputs
            return outputs

        # The layer keeps calling its own `call`; Keras' __call__ (masking, autocast, training
        # argument) is untouched.
        layer.call = call

    def recording(self):
        local = self._local

        class _Recording:
            def __enter__(self):
                local.active, local.value = True, None
                return self

            def __exit__(self, *exc):
                local.active = False

            @property
            def value(self):
                return local.value

        return _Recording()


def _find_layer(classifier, name):
    try:
        return classifier.get_layer(name)
    except ValueError:
        pass
    for layer in classifier._flatten_layers(include_self=False, recursive=True):
        if layer.name == name:
            return layer
    names = [layer.name for layer in classifier._flatten_layers(include_self=False, recursive=True)]
    raise ClassifierError(f"embedding_layer: the classifier has no layer {name!r}; its layers: {', '.join(names)}")


class ClassifierNetwork(keras.Model):
    """A user's classifier with the outputs a method needs.

    Args:
      classifier: a keras.Model (or Layer) from images in [0, 1] to logits [B, classes].
      embedding_layer: the name of the classifier's layer whose output is the features the
        contrastive terms shape (e.g. "avg_pool" of keras.applications models, a
        GlobalAveragePooling2D); None: the logits serve (for methods without an embedding term).
      embedding_head, embedding_dim: the projection head over the features ("linear": one Dense,
        MOREL's; "mlp": Dense-ReLU-Dense, SupCon's), width embedding_dim; None or 0: the features are
        the embedding.
    """

    def __init__(self, classifier, embedding_layer=None, embedding_head=None, embedding_dim=0, **kwargs):
        super().__init__(**kwargs)
        if not callable(classifier):
            raise ClassifierError(f"classifier: expected a Keras model, got {type(classifier).__name__}")
        if isinstance(classifier, keras.Model) and keras_models.ends_in_softmax(classifier):
            raise ClassifierError(
                f"the classifier's last layer ({classifier.layers[-1].name}) is a softmax: training and "
                "attacks need logits (build it with classifier_activation=None, or drop the softmax)"
            )
        self.classifier = classifier
        self.embedding_layer = embedding_layer
        self._features = _LayerOutput(_find_layer(classifier, embedding_layer)) if embedding_layer else None
        if embedding_dim and embedding_head:
            EMBEDDING_HEADS.check(embedding_head)
            self.head = keras.Sequential(name="projection_head")
            if embedding_head == "mlp":
                self.head.add(keras.layers.Dense(embedding_dim, activation="relu", name="head_hidden"))
            self.head.add(keras.layers.Dense(embedding_dim, name="head_embedding"))
        else:
            self.head = None

    def call(self, images, training=False):
        if self._features is not None:
            with self._features.recording() as recorded:
                logits = self.classifier(images, training=training)
            features = recorded.value
            if features is None:
                raise ClassifierError(
                    f"embedding_layer: the classifier ran without calling its layer {self.embedding_layer!r}"
                )
            features = tf.reshape(features, [tf.shape(features)[0], -1]) if len(features.shape) > 2 else features
        else:
            logits = self.classifier(images, training=training)
            features = None
        if isinstance(logits, dict):
            if "logits" not in logits:
                raise ClassifierError(f"the classifier returns {sorted(logits)}; name its class scores 'logits'")
            logits = logits["logits"]
        logits = tf.cast(logits, tf.float32)
        features = logits if features is None else tf.cast(features, tf.float32)
        embedding = tf.cast(self.head(features, training=training), tf.float32) if self.head else features
        return {"features": features, "embedding": embedding, "logits": logits}


def is_network(model):
    """A robustcl network: a Keras model whose outputs are {"features", "embedding", "logits"}
    (robustcl.models.build)."""
    outputs = keras_models.symbolic(model, "output") if isinstance(model, keras.Model) else None
    return isinstance(outputs, dict) and {"embedding", "logits"} <= set(outputs)


def network_of(classifier, image_shape=None, embedding_layer=None, embedding_head=None, embedding_dim=0):
    """The network a method trains, built on one batch: a robustcl network (a model whose outputs
    are {"features", "embedding", "logits"}) as it is, any other classifier wrapped in a
    ClassifierNetwork. Returns (network, embedding width)."""
    if is_network(classifier):
        return classifier, int(classifier.output["embedding"].shape[-1])
    shape = image_shape
    if shape is None and isinstance(classifier, keras.Model):
        try:
            shape = keras_models.image_shape(classifier)
        except keras_models.InputShapeError as error:
            raise ClassifierError(str(error)) from None
    if not shape or None in shape:
        raise ClassifierError(
            "image_shape: the classifier does not say which images it takes; pass image_shape=(H, W, C)"
        )
    network = ClassifierNetwork(classifier, embedding_layer, embedding_head, embedding_dim)
    outputs = network(np.zeros((2, *shape), np.float32), training=False)  # builds the head
    logits = outputs["logits"]
    if len(logits.shape) != 2:
        raise ClassifierError(f"the classifier returns shape {list(logits.shape)}; expected logits [batch, classes]")
    if keras_models.looks_like_probabilities(
        network(np.random.default_rng(0).uniform(size=(4, *shape)).astype(np.float32))["logits"]
    ):
        raise ClassifierError(
            "the classifier's outputs are probabilities (rows in [0, 1] summing to 1): training and attacks need "
            "logits (remove the final softmax)"
        )
    return network, int(outputs["embedding"].shape[-1])
