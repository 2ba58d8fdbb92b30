"""AdversarialModel: the one Keras model whose train_step serves every method."""

import dataclasses

import keras
import tensorflow as tf

from robustcl import methods
from robustcl.attacks import OBJECTIVES, attack_from_config
from robustcl.attacks.settings import AttackConfig
from robustcl.losses import cross_entropy_per_example as cross_entropy
from robustcl.losses import global_batch
from robustcl.settings import ConfigError, check_name
from robustcl.training.classifier import ClassifierNetwork, is_network, network_of

# Validation attacks draw their random start from a fixed stream, so every evaluation of the same
# weights gives the same number; training draws a fresh start per optimizer step.
_VALIDATION_STREAM = 2**31 - 1


def _global_sum(values):
    """Sums a structure of tensors over all replicas (identity on one device)."""
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


def _keras_averages_outputs_over_workers():
    """Whether Keras (3.15, reduce_per_replica) averages step outputs with strategy.reduce(MEAN,
    axis=0): under MultiWorkerMirroredStrategy across several workers, where a scalar output fails
    ("Invalid reduction dimension 0 for input with 0 dimensions")."""
    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.num_replicas_in_sync > len(
        strategy.extended.worker_devices
    )


def _correct(labels, logits):
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)


_UNSET = object()


def _attack_configs(train_attack, val_attack, keywords):
    """(training attack, validation attack): the config objects given, or made from the keywords
    (validated as their flags are: a bad value raises ConfigError naming the flag)."""
    given = sorted(k for k, v in keywords.items() if v is not _UNSET)
    if train_attack is not None and given:
        raise ConfigError(f"--{given[0]}: give the attack as train_attack=AttackConfig(...) or as keywords, not both")

    def keyword(name, default):
        return default if keywords[name] is _UNSET else keywords[name]

    if train_attack is None:
        defaults = AttackConfig()
        train_attack = AttackConfig(
            name="pgd",
            norm=keyword("norm", defaults.norm),
            eps=keyword("eps", defaults.eps),
            step_size=keyword("step_size", defaults.step_size),
            steps=keyword("attack_steps", defaults.steps),
            random_start=keyword("random_start", defaults.random_start),
        )
    if val_attack is None:
        val_attack = AttackConfig(
            name="pgd",
            norm=train_attack.norm,
            eps=train_attack.eps,
            step_size=keyword("val_step_size", train_attack.step_size),
            steps=keyword("val_attack_steps", train_attack.steps),
        )
    train_attack.validate()
    val_attack.validate(flags=AttackConfig.VALIDATION_FLAGS)
    if val_attack.name != "pgd":
        raise ConfigError("--val_attack: validation uses PGD")
    return train_attack, val_attack


def _method(method, method_params, contrastive_scope):
    """A Method instance from a registered name (with its Params from method_params) or as given."""
    if isinstance(method, methods.Method):
        if method_params:
            raise ConfigError("--method: method_params are for a method given by name; this Method has its params")
        return method
    if not isinstance(method, str):
        raise ConfigError(f"--method: expected a registered method's name or a Method, got {type(method).__name__}")
    check_name(methods.METHODS, "method", method)
    method_class = methods.get(method)
    fields = {f.name for f in dataclasses.fields(method_class.Params)}
    unknown = sorted(set(method_params or {}) - fields)
    if unknown:
        raise ConfigError(
            f"--{method}_{unknown[0]}: {method} has no parameter {unknown[0]!r}; its parameters: "
            f"{', '.join(sorted(fields)) or 'none'}"
        )
    return method_class(method_class.Params(**(method_params or {})), contrastive_scope)


class AdversarialModel(keras.Model):
    """Adversarial training of a classifier by a method: the one Keras model whose train_step serves
    every method.

    train_step: make x_adv by maximizing the method's attack objective over the training threat
    model (network in inference mode, so BatchNorm statistics are untouched), forward the clean and/or
    adversarial batch in training mode, minimize the sum of the method's loss terms (plus L2 weight
    decay on every variable, as torch.optim.SGD's weight_decay), and report each term.
    test_step (`model.evaluate`, validation_data): clean and PGD accuracy (and cross-entropy) with
    the validation attack.

    Every reported figure is reduced over the global batch inside the step, so N replicas report
    exactly what one device reports on the same batch.

    Args:
      classifier: any Keras classifier from images in [0, 1] to logits (Sequential, functional,
        subclassed, keras.applications with classifier_activation=None); its weights are trained in
        place, so `classifier.save(...)` afterwards saves the robust model. Or a robustcl network
        (outputs {"features", "embedding", "logits"}: robustcl.models.build).
      method: a registered method's name ("standard", "pgd_at", "trades", "mart", "morel",
        "supcon_margin", "anchor", "contrastive_at", or a user's) or a Method instance.
      method_params: the named method's hyperparameters by field name, e.g. {"beta": 6.0}.
      embedding_layer: for methods that shape an embedding, the name of the classifier's layer whose
        output is the features (e.g. "avg_pool"); embedding_head ("linear", "mlp") and
        embedding_dim: the projection head over them, the method's own by default; it is trained
        with the classifier and is not part of it.
      norm, eps, step_size, attack_steps, random_start: the training attack; val_step_size,
        val_attack_steps: the validation PGD's (default: the training attack's). Or
        train_attack / val_attack: robustcl.attacks.AttackConfig objects.
      weight_decay: L2 penalty added to every gradient (torch SGD's weight_decay); 0: none.
      seed: seeds the attacks' random starts (per optimizer step).
      contrastive_scope: "global" (pair terms see the global batch under any strategy) or "replica".
      jit_compile_attack: XLA-compile the attack.
      image_shape: (H, W, C), for a classifier that does not declare the images it takes.
    """

    def __init__(
        self,
        classifier,
        method="pgd_at",
        *,
        method_params=None,
        embedding_layer=None,
        embedding_head=None,
        embedding_dim=None,
        norm=_UNSET,
        eps=_UNSET,
        step_size=_UNSET,
        attack_steps=_UNSET,
        random_start=_UNSET,
        val_step_size=_UNSET,
        val_attack_steps=_UNSET,
        train_attack=None,
        val_attack=None,
        weight_decay=0.0,
        seed=0,
        contrastive_scope="global",
        jit_compile_attack=False,
        image_shape=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        method = _method(method, method_params, contrastive_scope)
        train_attack, val_attack = _attack_configs(
            train_attack,
            val_attack,
            {
                "norm": norm,
                "eps": eps,
                "step_size": step_size,
                "attack_steps": attack_steps,
                "random_start": random_start,
                "val_step_size": val_step_size,
                "val_attack_steps": val_attack_steps,
            },
        )
        if weight_decay < 0:
            raise ConfigError(f"--weight_decay: must be >= 0, got {weight_decay}")
        head = method.embedding_head if embedding_head is None else embedding_head
        width = method.embedding_dim if embedding_dim is None else embedding_dim
        if embedding_layer is None and method.embedding_head and not is_network(classifier):
            raise ConfigError(
                f"--method: {method.name} shapes an embedding: name the classifier's layer whose output it is "
                "with embedding_layer= (e.g. the global pooling layer)"
            )
        network, embedding_width = network_of(classifier, image_shape, embedding_layer, head, width)
        self.network = network  # the classifier, trained in place (and the projection head, if any)
        self.method = method
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self._objective = method.objective if method.attack_objective else None
        self._objective_exchanges = method.objective_uses_global_batch and method.contrastive_scope == "global"
        self._train_attack = attack_from_config(train_attack, method.attack_start_sigma) if self._objective else None
        method.build(embedding_dim=embedding_width)
        self.method_layers = list(method.layers)  # tracked: trained, saved and restored
        self.train_attack, self.val_attack = train_attack, val_attack  # the settings, as given or made
        self._val_attack = attack_from_config(val_attack)
        # XLA for the attack alone: it is most of the step's work, and unlike a jit-compiled
        # train_step it also compiles under tf.distribute.
        # autograph=False: the attack's loop is an explicit tf.while_loop, and autograph mis-converts
        # methods' bound `objective` (seen: "tf__layers() takes 1 positional argument").
        self._compiled_attack = (
            tf.function(self._run_attack, jit_compile=True, autograph=False) if jit_compile_attack else None
        )
        names = ["loss", *method.loss_names, "accuracy", "robust_accuracy", "ce", "robust_ce"]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True  # the network and the method's layers are built; no weights of its own

    @property
    def classifier(self):
        """The classifier being trained (the user's model, without the projection head)."""
        return self.network.classifier if isinstance(self.network, ClassifierNetwork) else self.network

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, images, training=False):
        return self.network(images, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15's version averages the whole first batch with strategy.reduce before building,
        # which MultiWorkerMirroredStrategy rejects ("Attempt to convert a value (PerReplica...)",
        # keras-team/keras#20585). Building needs only shapes and dtypes: this replica's part of the
        # batch has them, under every strategy, without any cross-worker traffic.
        strategy = self._distribute_strategy
        if strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def _run_attack(self, attack, objective, x, labels, reference, seed, unroll=False):
        def loss_fn(x_adv):
            return objective(self.network(x_adv, training=False), labels, reference)

        return attack(loss_fn, x, seed, unroll)

    def _attack(self, attack, objective, x, labels, reference, seed, exchanges=False):
        """x_adv from `attack`. exchanges: the objective gathers the global batch, which needs every
        replica at each step: under several replicas the loop is unrolled and not XLA-compiled
        (MirroredStrategy synchronizes replicas neither inside a graph loop nor a nested function)."""
        if exchanges and global_batch.num_replicas() > 1:
            return self._run_attack(attack, objective, x, labels, reference, seed, unroll=True)
        run = self._compiled_attack or self._run_attack
        return run(attack, objective, x, labels, reference, seed)

    def _update(self, name, values, weights=None):
        self._trackers[name].update_state(values, sample_weight=weights)
        return name

    def _results(self, names):
        """Global (all-replica) values of the named trackers, read inside the replica step."""
        trackers = [self._trackers[n] for n in names]
        totals = _global_sum([(tf.identity(t.total), tf.identity(t.count)) for t in trackers])
        results = {n: tf.math.divide_no_nan(total, count) for n, (total, count) in zip(names, totals)}
        if _keras_averages_outputs_over_workers():
            # Every replica holds the same global value; one row each averages back to it.
            results = {n: tf.reshape(v, [1]) for n, v in results.items()}
        return results

    def train_step(self, data):
        x, labels = data[0], data[1]
        x_view2 = None
        if isinstance(x, (tuple, list)):  # two augmentations, for methods with data_views == 2
            x, x_view2 = x[0], tf.cast(x[1], tf.float32)
        x = tf.cast(x, tf.float32)
        reported = []
        x_adv = reference = None
        if self._train_attack is not None:
            if self.method.needs_reference_pass:
                reference = self.network(x, training=False)
            seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
            x_adv = self._attack(
                self._train_attack, self._objective, x, labels, reference, seed, exchanges=self._objective_exchanges
            )

        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            clean = self.network(x, training=True) if self.method.uses_clean else None
            adversarial = (
                self.network(x_adv, training=True) if x_adv is not None and self.method.uses_adversarial else None
            )
            augmented = self.network(x_view2, training=True) if x_view2 is not None else None
            terms = self.method.losses(labels, clean, adversarial, augmented)
            # Each replica contributes sum(w * v) / global sum(w); the optimizer sums gradients over
            # replicas, giving the gradient of the global mean.
            denominators = _global_sum(
                [
                    tf.stop_gradient(tf.reduce_sum(tf.ones_like(t.values) if t.weights is None else t.weights))
                    for t in terms.values()
                ]
            )
            loss = tf.add_n(
                [
                    tf.reduce_sum(t.values if t.weights is None else t.values * t.weights) / tf.maximum(d, 1e-12)
                    for t, d in zip(terms.values(), denominators)
                ]
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, variables)
        # Variables the losses do not reach (e.g. an unused embedding head) stay untouched, weight
        # decay included, as torch.optim.SGD skips parameters without a gradient.
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if self.weight_decay:
            # These are gradients of the scaled loss (mixed_float16's loss scaling): scale the
            # decay alike, so that LossScaleOptimizer's unscaling leaves weight_decay * v.
            share = self.optimizer.scale_loss(
                self.weight_decay / tf.distribute.get_replica_context().num_replicas_in_sync
            )
            pairs = [(g + tf.cast(share, g.dtype) * tf.cast(v, g.dtype), v) for g, v in pairs]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])

        reported.append(self._update("loss", _global_sum(loss)))
        for name, term in terms.items():
            reported.append(self._update(name, term.values, term.weights))
        accuracy_source = clean if clean is not None else reference
        if accuracy_source is not None:
            reported.append(self._update("accuracy", _correct(labels, accuracy_source["logits"])))
        if adversarial is not None:
            reported.append(self._update("robust_accuracy", _correct(labels, adversarial["logits"])))
        return self._results(reported)

    def test_step(self, data):
        x, labels = data[0], data[1]
        x = tf.cast(x[0] if isinstance(x, (tuple, list)) else x, tf.float32)
        clean = self.network(x, training=False)
        clean_logits = clean["logits"]
        seed = tf.constant([self.seed, _VALIDATION_STREAM], tf.int64)
        x_adv = self._attack(self._val_attack, OBJECTIVES.get("ce"), x, labels, clean, seed)
        adv_logits = self.network(x_adv, training=False)["logits"]
        reported = [
            self._update("accuracy", _correct(labels, clean_logits)),
            self._update("robust_accuracy", _correct(labels, adv_logits)),
            self._update("ce", cross_entropy(labels, clean_logits)),
            self._update("robust_ce", cross_entropy(labels, adv_logits)),
        ]
        return self._results(reported)
