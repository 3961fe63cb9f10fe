"""QRS detectors: functions ``detector(signal, fs, **params) -> R-peak sample indices``."""
