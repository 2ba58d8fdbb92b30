"""robustcl: adversarially robust image classifiers shaped by contrastive objectives."""

__version__ = "0.1.0"
