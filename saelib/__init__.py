"""saelib: sparse-autoencoder training and SAEBench-style evaluation for reproducing
CompeteSAE and sparsity-guided orthogonality on small offline models."""

import os as _os

# With more runnable threads than cores, OpenMP's default busy-waiting makes small torch ops up to
# 30x slower on a 2-core machine; passive waiting costs nothing when the machine is idle.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
