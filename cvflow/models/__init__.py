"""Models that learn CVs. One module per kind; each registers itself in ``MODELS``.

A model kind provides a class with ``from_config(model_cfg, n_features)``, a
``loss(batch, weights)`` method (weights of mean one over the data set; see
:func:`~cvflow.models.autoencoder.weighted_mse`), an ``encoder`` attribute (an :class:`MLP`
whose output is the CV in feature space) and ``cv_range_for(model_cfg)``, the interval the CV lives in. Adding a kind of model (multi-decoder,
variational, ...) means adding a module here and one entry in ``MODELS``.
"""
from .autoencoder import MLP, Autoencoder

MODELS = {"autoencoder": Autoencoder}


def build_model(model_cfg, n_features: int):
    """Instantiate the model named by ``model_cfg.kind``."""
    return MODELS[model_cfg.kind].from_config(model_cfg, n_features)


__all__ = ["MLP", "Autoencoder", "MODELS", "build_model"]
