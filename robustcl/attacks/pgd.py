"""Projected gradient ascent (PGD) and FGSM, written once over any threat model and objective."""

import tensorflow as tf

from robustcl.attacks.threat import threat_model


def replica_slice_of_global_noise(sample, x, seed):
    """Noise for this replica's part of the global batch.

    The noise is drawn for the whole global batch and sliced by replica id, so a seeded attack under
    a MirroredStrategy gives every example the same start as one device on the same global batch.
    Assumes the global batch is split into equal consecutive parts, as tf.distribute does.
    """
    context = tf.distribute.get_replica_context()
    num_replicas = context.num_replicas_in_sync if context is not None else 1
    if num_replicas == 1:
        return sample(tf.shape(x), seed)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    local = tf.shape(x)[0]
    global_shape = tf.concat([[local * num_replicas], tf.shape(x)[1:]], axis=0)
    return sample(global_shape, seed)[replica_id * local : (replica_id + 1) * local]


def pgd(loss_fn, x, threat, steps, step_size, random_start=True, seed=(0, 0), start_sigma=None, unroll=False):
    """Maximizes sum(loss_fn(x_adv)) over the threat set around x by projected steepest ascent.

    Args:
      loss_fn: x_adv -> per-example loss [batch]; must call the model in inference mode.
      x: float32 images in [0, 1].
      threat: a LinfBall or L2Ball.
      steps, step_size: number and size of ascent steps.
      random_start: start from a point drawn uniformly from the threat set (seeded by `seed`).
      seed: int32 [2] stateless seed for the random start.
      start_sigma: if set, the random start is x + start_sigma * N(0, 1) instead (projected), as the
        public TRADES and MART code starts (sigma 0.001).
      unroll: a Python loop of `steps` copies instead of a tf.while_loop, for a loss_fn that
        exchanges tensors between replicas: MirroredStrategy cannot synchronize replicas inside a
        graph loop.
    Returns:
      x_adv with gradients stopped: inside the threat set and [0, 1]. Nothing else is changed.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if random_start and threat.eps > 0:
        if start_sigma:
            sample = lambda shape, s: start_sigma * tf.random.stateless_normal(shape, s)  # noqa: E731
        else:
            sample = threat.sample_start
        x_adv = threat.project(x, x + replica_slice_of_global_noise(sample, x, seed))
    else:
        x_adv = tf.identity(x)

    def ascent_step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            # Summing keeps each example's gradient independent of the batch size.
            loss = tf.reduce_sum(tf.cast(loss_fn(x_adv), tf.float32))
        # A model whose output does not depend on the input differentiably gets zero steps.
        grad = tf.cast(tape.gradient(loss, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO), tf.float32)
        # Through a SavedModel signature of unknown rank the gradient has no static shape; it is
        # x_adv's, which keeps the loop's shape invariant.
        grad = tf.ensure_shape(grad, x_adv.shape)
        x_adv = x_adv + step_size * threat.ascent_direction(grad)
        return i + 1, threat.project(x, x_adv)

    if unroll:
        for i in range(steps):
            _, x_adv = ascent_step(i, x_adv)
    else:
        _, x_adv = tf.while_loop(lambda i, _: i < steps, ascent_step, (tf.constant(0), x_adv))
    return tf.stop_gradient(x_adv)


def fgsm(loss_fn, x, threat, unroll=False):
    """One steepest-ascent step of size eps from x (no random start)."""
    return pgd(loss_fn, x, threat, steps=1, step_size=threat.eps, random_start=False, unroll=unroll)


def attack_from_config(config, start_sigma=None):
    """Returns attack(loss_fn, x, seed, unroll=False) -> x_adv for an AttackConfig, or None for name
    'none'."""
    if config.name == "none":
        return None
    threat = threat_model(config.norm, config.eps)
    if config.name == "fgsm":
        return lambda loss_fn, x, seed, unroll=False: fgsm(loss_fn, x, threat, unroll)
    return lambda loss_fn, x, seed, unroll=False: pgd(
        loss_fn, x, threat, config.steps, config.step_size, config.random_start, seed, start_sigma, unroll
    )
