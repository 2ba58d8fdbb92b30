"""robustcl: adversarially robust image classifiers shaped by contrastive objectives."""

from robustcl import hardware

# Before any module of robustcl imports TensorFlow: its CPU backend is fixed at its import.
hardware.choose_backend()

__version__ = "0.1.0"
