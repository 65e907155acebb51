"""cvflow: learn collective variables while sampling (autoencoders + eABF on OpenMM)."""
__version__ = "0.1.0"
