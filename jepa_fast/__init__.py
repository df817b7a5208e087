"""jepa-fast: a high-throughput, data-loader-centric trainer for action-conditioned JEPA world models."""

__version__ = "0.1.0"
