"""The global batch for losses over pairs of examples, under any tf.distribute strategy.

A contrastive loss, a mining weight or an attention over a class compares every example with every
other one. Under MirroredStrategy or MultiWorkerMirroredStrategy each replica holds only its part
of the global batch, so computed per replica such a loss is another objective: each anchor sees
1/N of its positives and negatives. `gather` concatenates every replica's part in replica order
(the global batch as one device sees it; differentiable) and says where this replica's own samples
lie in it. Each replica then scores its own samples as anchors against the whole global batch, so
the replicas' losses add up to the one-device loss; the concatenation's gradient sums the upstream
gradients of all replicas before handing each replica its rows, so the gradient reaching each
replica's embeddings is the gradient of that one-device loss.

Call it inside the replica step (train_step, an attack objective), never inside a tf.while_loop
under MirroredStrategy: its cross-replica merge_call cannot run inside a graph loop there (attacks
whose objective gathers unroll their loop instead; see AdversarialModel).
"""

import tensorflow as tf

from robustcl.registry import Registry

# global: pair terms over the gathered global batch; replica: each replica's part only.
CONTRASTIVE_SCOPES = Registry("scope", ("global", "replica"))


def num_replicas():
    """Replicas taking part in the current step (1 outside any replica context)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def _concat_across_replicas(context, tensors, counts):
    """Every replica's rows of each tensor, in replica order, through one SUM all-reduce.

    Each replica writes its rows (padded to the longest part) into its own slot of a zero tensor
    [replicas, longest, ...]; summing over replicas fills every slot, and the padding is dropped.
    An all-reduce rather than ReplicaContext.all_gather (SimCLR's cross-replica concat does the same
    on TPUs): all_gather fails under MultiWorkerMirroredStrategy in TF 2.21 ("destinations can not
    be empty"), and the gradient of a SUM all-reduce is the SUM all-reduce of the gradients, so each
    replica's rows receive what every replica's loss sends them, as one device's would.
    """
    replicas = context.num_replicas_in_sync
    longest = tf.reduce_max(counts)
    slot = tf.one_hot(context.replica_id_in_sync_group, replicas)
    kept = tf.reshape(tf.sequence_mask(counts, longest), [-1])
    out = []
    for t in tensors:
        padded = tf.pad(t, [[0, longest - tf.shape(t)[0]]] + [[0, 0]] * (t.shape.rank - 1))
        values = tf.cast(padded, tf.float32) if t.dtype.is_integer else padded
        placed = tf.reshape(tf.cast(slot, values.dtype), [replicas, 1] + [1] * t.shape.rank) * values[None]
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, placed)
        rows = tf.boolean_mask(tf.reshape(total, tf.concat([[-1], tf.shape(t)[1:]], 0)), kept)
        rows = tf.cast(tf.round(rows), t.dtype) if t.dtype.is_integer else rows
        out.append(tf.ensure_shape(rows, [None, *t.shape[1:]]))
    return out


def gather(tensors, scope="global"):
    """(global_tensors, anchors): the global batch of each tensor and this replica's samples in it.

    Args:
      tensors: a structure of tensors whose first axis is this replica's part of the batch (all
        with the same length); integer tensors (labels) must be below 2**24 (sent as float32).
      scope: "global" gathers across every replica and worker; "replica" keeps the local batch (the
        cheaper per-replica objective, chosen knowingly).
    Returns:
      The gathered structure (the input itself on one replica or with scope "replica"), and
      anchors = (start, count): this replica's samples are rows start .. start+count-1 of it. Parts
      may differ in length (a global batch not divisible by the replica count).
    """
    CONTRASTIVE_SCOPES.check(scope)
    flat = tf.nest.flatten(tensors)
    count = tf.shape(flat[0])[0]
    if scope == "replica" or num_replicas() == 1:
        return tensors, (tf.constant(0, count.dtype), count)
    context = tf.distribute.get_replica_context()
    slot = tf.one_hot(context.replica_id_in_sync_group, context.num_replicas_in_sync)
    counts = tf.cast(
        tf.round(context.all_reduce(tf.distribute.ReduceOp.SUM, slot * tf.cast(count, tf.float32))), count.dtype
    )
    start = tf.reduce_sum(counts[: context.replica_id_in_sync_group])
    gathered = _concat_across_replicas(context, flat, counts)
    return tf.nest.pack_sequence_as(tensors, gathered), (start, count)


def anchor_rows(anchors, batch, views):
    """(rows, count): the rows of a flattened [batch * views] contrast set (sample-major order) whose
    samples are the anchors (start, count) of `gather`; None means every sample is an anchor."""
    start, count = (0, batch) if anchors is None else anchors
    return tf.range(start * views, (start + count) * views), count
