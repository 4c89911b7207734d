"""saelib: sparse-autoencoder training and SAEBench-style evaluation for reproducing
CompeteSAE and sparsity-guided orthogonality on small offline models."""

__version__ = "0.1.0"
