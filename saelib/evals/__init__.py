"""SAEBench-style evaluations. ``core``: reconstruction, sparsity and splice (KL/CE) metrics."""
from .core import CoreAccumulator, ce_score, evaluate_core, feature_density, kl_score, reconstruction_metrics

__all__ = ["CoreAccumulator", "ce_score", "evaluate_core", "feature_density", "kl_score", "reconstruction_metrics"]
