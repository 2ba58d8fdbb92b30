"""robustcl: adversarially robust image classifiers shaped by contrastive objectives.

    model = robustcl.AdversarialModel(classifier, method="morel", embedding_layer="avg_pool", eps=8 / 255)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9)); model.fit(train, validation_data=val)
    report = robustcl.evaluate(classifier, x_test, y_test, norm="linf", eps=8 / 255, version="standard")

The package's face: the public API a Keras user writes. Its layers, bottom first, and the import
rule between them: CONTRIBUTING.md.
"""

from robustcl import hardware

# Before any module of robustcl imports TensorFlow: its CPU backend is fixed at its import.
hardware.choose_backend()

from robustcl import data, methods, models  # noqa: E402  (after the backend is chosen)
from robustcl.attacks.settings import AttackConfig  # noqa: E402
from robustcl.evaluation import Report, evaluate  # noqa: E402
from robustcl.training import callbacks  # noqa: E402
from robustcl.training.model import AdversarialModel  # noqa: E402

__version__ = "0.1.0"

__all__ = ["AdversarialModel", "AttackConfig", "Report", "callbacks", "data", "evaluate", "methods", "models"]
