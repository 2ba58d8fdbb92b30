import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import losses, methods, models
from robustcl.attacks.settings import AttackConfig
from robustcl.settings import ConfigError
from robustcl.methods.morel import ClassAttention
from robustcl.losses.mining import hard_positive_weights
from robustcl.training.model import AdversarialModel
from tests.conftest import template_batch


def _model(name, **params):
    method_class = methods.get(name)
    method = method_class(method_class.Params(**params))
    network = models.build(
        "tiny", 10, (0.5,) * 3, (0.25,) * 3, embedding_dim=16, embedding_head=method_class.embedding_head or "mlp"
    )
    model = AdversarialModel(
        network,
        method,
        train_attack=AttackConfig(steps=2),
        val_attack=AttackConfig(steps=2),
        weight_decay=5e-4,
        seed=3,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_method_trains_without_nan_and_reduces_its_loss_on_a_fixed_batch(name):
    keras.utils.set_random_seed(0)
    x, y = template_batch(n=48, seed=1)
    model = _model(name)
    inputs = (x, x[:, :, ::-1]) if model.method.data_views == 2 else x
    # 30 steps: a method whose attack maximizes its own loss (contrastive_at) sees that loss rise
    # over the first steps as the attack strengthens, then fall (7.7 -> 7.2 seen for 3 seeds).
    logs = [model.train_on_batch(inputs, y, return_dict=True) for _ in range(30)]
    for step_logs in logs:
        assert set(model.method.loss_names) <= set(step_logs)
        assert all(np.isfinite(v) for v in step_logs.values()), step_logs
    first = np.mean([l["loss"] for l in logs[:3]])
    last = np.mean([l["loss"] for l in logs[-3:]])
    assert last < first, (name, first, last)
    assert all(np.isfinite(w.numpy()).all() for w in model.trainable_variables)


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_forward_passes_per_step_counts_the_passes_the_step_makes(name):
    # The benchmarks' FLOP rates and convolution ceilings rest on these counts. The step runs the
    # clean inference pass only where the objective or the clean accuracy needs it: TensorFlow
    # dropped an unread one anyway, so counting it overstated MART's and MOREL's FLOP rate by a pass
    # in 17.
    keras.utils.set_random_seed(0)
    model = _model(name)
    calls = []  # the training flag of every call of the network while train_step is traced
    forward = model.network.call

    def counting_call(inputs, training=None, **kwargs):
        calls.append(bool(training))
        return forward(inputs, training=training, **kwargs)

    model.network.call = counting_call
    x, y = template_batch(n=8, seed=1)
    inputs = (x, x[:, :, ::-1]) if model.method.data_views == 2 else x
    model.train_on_batch(inputs, y)  # builds the model and the optimizer; then one trace alone
    calls.clear()
    tf.function(model.train_step)((tf.nest.map_structure(tf.constant, inputs), tf.constant(y)))
    attacks = model.method.attack_objective is not None
    # The attack's loop body is traced once, whatever its number of steps.
    before_attack = calls.count(False) - int(attacks)
    assert before_attack == int(model.method.needs_reference_pass)
    steps = 7
    assert model.method.forward_passes_per_step(steps) == before_attack + 2 * steps * attacks + 3 * calls.count(True)
    assert model.method.passes_per_step(steps) == (before_attack, steps * attacks, calls.count(True))
    if not model.method.objective_reads_clean and attacks:
        outputs = model.network(tf.constant(x[:4]))
        assert np.isfinite(model.method.objective(outputs, tf.constant(y[:4]), None).numpy()).all()


def test_method_layers_are_trained_and_saved(tmp_path):
    model = _model("morel")
    attention_vars = model.method.class_attention.trainable_variables
    assert attention_vars and all(any(v is w for w in model.trainable_variables) for v in attention_vars)
    x, y = template_batch(n=16)
    before = [v.numpy() for v in attention_vars]
    model.train_on_batch(x, y)
    assert any(np.abs(v.numpy() - b).max() > 0 for v, b in zip(attention_vars, before))
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    other = _model("morel")
    other.load_weights(path)
    for a, b in zip(attention_vars, other.method.class_attention.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_class_attention_only_mixes_samples_of_the_same_class():
    layer = ClassAttention(num_heads=2)
    x = tf.random.normal([6, 8], seed=1)
    labels = tf.constant([0, 1, 0, 1, 2, 0])
    out = layer(x, labels)
    changed = tf.tensor_scatter_nd_update(x, [[1]], [tf.random.normal([8], seed=2)])  # a class-1 row
    out_changed = layer(changed, labels)
    same = np.abs(out.numpy() - out_changed.numpy()).max(axis=1)
    assert same[[0, 2, 4, 5]].max() < 1e-6  # classes 0 and 2 do not see class 1
    assert same[3] > 1e-4  # the other class-1 sample does
    # A class with a single member attends only to itself.
    single = layer(x[4:5], labels[4:5])
    np.testing.assert_allclose(single.numpy(), out.numpy()[4:5], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accuracy_term", ["trades", "mart"])
def test_morel_weights_terms_by_cone_scalarization(accuracy_term):
    params = dict(
        accuracy_term=accuracy_term,
        k_feature=0.3,
        k_accuracy=0.6,
        gamma=0.05,
        alpha=0.2,
        beta=4.0,
        reference_feature=0.1,
        reference_accuracy=0.2,
    )
    method = methods.get("morel")(methods.get("morel").Params(**params))
    method.build(embedding_dim=8)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1, 2, 2])
    clean = {
        "embedding": tf.constant(rng.normal(size=(6, 8)), tf.float32),
        "logits": tf.constant(rng.normal(size=(6, 5)), tf.float32),
    }
    adv = {
        "embedding": tf.constant(rng.normal(size=(6, 8)), tf.float32),
        "logits": tf.constant(rng.normal(size=(6, 5)), tf.float32),
    }
    terms = method.losses(labels, clean, adv)
    total = sum(
        float(
            tf.reduce_sum(t.values * (1 if t.weights is None else t.weights))
            / tf.reduce_sum(tf.ones_like(t.values) if t.weights is None else t.weights)
        )
        for t in terms.values()
    )
    attended = method.class_attention(clean["embedding"], labels, training=True)
    feature = float(
        tf.reduce_mean(losses.cosine_alignment_per_example(clean["embedding"], adv["embedding"]))
    ) + 0.2 * float(losses.MultiPositiveContrastiveLoss(0.1)(labels, attended))
    loss_class = losses.TradesLoss if accuracy_term == "trades" else losses.MartLoss
    accuracy = float(loss_class(beta=4.0)(labels, tf.stack([clean["logits"], adv["logits"]], 1)))
    f, a = feature - 0.1, accuracy - 0.2
    expected = 0.3 * f + 0.6 * a + 0.05 * (f + a)
    assert total == pytest.approx(expected, rel=1e-5)
    assert method.attack_objective == ("kl" if accuracy_term == "trades" else "ce")


def test_hard_positive_weights():
    labels = np.array([0, 0, 0, 1])
    z = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2], [0.0, 1.0]])
    uniform = hard_positive_weights(labels, z, "exp", hardness=0.0).numpy()
    np.testing.assert_allclose(uniform[0, [1, 2]], [1.0, 1.0])
    weights = hard_positive_weights(labels, z, "exp", hardness=2.0).numpy()
    assert weights[0, 2] > weights[0, 1]  # the far positive weighs more
    np.testing.assert_allclose(weights[0, [1, 2]].mean(), 1.0)
    assert weights[0, 3] == 0 and weights[0, 0] == 0  # negatives and self carry no weight
    np.testing.assert_array_equal(hard_positive_weights(labels, z, "none").numpy(), np.ones((4, 4)))


def test_contrastive_at_attack_maximizes_the_contrastive_objective():
    method = methods.get("contrastive_at")(methods.get("contrastive_at").Params(attack_ce_weight=0.0))
    rng = np.random.default_rng(1)
    labels = np.array([0, 0, 1, 1])
    reference = {"embedding": tf.constant(rng.normal(size=(4, 6)), tf.float32)}
    adv_embedding = tf.Variable(rng.normal(size=(4, 6)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(
            method.objective({"embedding": adv_embedding, "logits": tf.zeros([4, 2])}, labels, reference)
        )
    grad = tape.gradient(loss, adv_embedding)
    assert float(loss) > 0 and float(tf.reduce_max(tf.abs(grad))) > 1e-3


@pytest.mark.parametrize(
    "name,params,flag",
    [
        ("morel", {"accuracy_term": "l2"}, "--morel_accuracy_term"),
        ("trades", {"beta": -1.0}, "--trades_beta"),
        ("anchor", {"mining": "random"}, "--anchor_mining"),
        ("supcon_margin", {"temperature": 0.0}, "--supcon_margin_temperature"),
    ],
)
def test_bad_method_params_name_their_flag(name, params, flag):
    with pytest.raises(ConfigError, match=flag):
        methods.check_params(name, methods.get(name).Params(**params))


@pytest.mark.parametrize("name", ["trades", "mart", "morel"])
def test_trades_style_methods_start_their_attack_as_the_public_code(name):
    params_class = methods.get(name).Params
    assert methods.get(name)().attack_start_sigma == 0.001
    assert methods.get(name)(params_class(start_sigma=0.0)).attack_start_sigma is None  # uniform
    assert methods.get("pgd_at")().attack_start_sigma is None


@pytest.mark.parametrize("name", ["pgd_at", "trades", "contrastive_at"])
def test_xla_compiled_attack_trains(name):
    keras.utils.set_random_seed(0)
    x, y = template_batch(n=16, seed=2)
    method_class = methods.get(name)
    network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3, embedding_dim=8)
    model = AdversarialModel(
        network,
        method_class(),
        train_attack=AttackConfig(steps=2),
        val_attack=AttackConfig(steps=2),
        jit_compile_attack=True,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    inputs = (x, x[:, :, ::-1]) if method_class.data_views == 2 else x
    logs = model.train_on_batch(inputs, y, return_dict=True)
    assert np.isfinite(logs["loss"])
