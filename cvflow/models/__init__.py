"""Models that learn CVs. One module per kind; each registers itself in ``MODELS``.

Every kind subclasses :class:`~cvflow.models.base.CVModel`, whose docstring is the contract
the loop relies on (``from_config``, ``cv_range_for``, ``encoder``, ``loss``,
``start_epoch``/``annealing_epochs``, ``decoder_module``). The trainer, the export and the
workflow call only those, so adding a kind of model means adding a module
here, one entry in ``MODELS`` and its keys in :class:`cvflow.config.ModelConfig`.
"""
from .autoencoder import Autoencoder
from .base import MLP, CVModel, MLPBank, weighted_mse
from .multidecoder import MultiDecoderAutoencoder
from .vae import VAE

MODELS = {"autoencoder": Autoencoder, "multidecoder": MultiDecoderAutoencoder, "vae": VAE}


def build_model(model_cfg, n_features: int) -> CVModel:
    """Instantiate the model named by ``model_cfg.kind``."""
    return MODELS[model_cfg.kind].from_config(model_cfg, n_features)


__all__ = ["MLP", "MLPBank", "CVModel", "Autoencoder", "MultiDecoderAutoencoder", "VAE", "MODELS", "build_model",
           "weighted_mse"]
