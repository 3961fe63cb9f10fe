"""ECG-TransNet: a hybrid 1D-ResNet + Transformer heartbeat classifier (ecgkit's reference model)."""

__version__ = "0.1.0"
