"""Occlusion sensitivity: an example third-party explainer (torch only).

The attribution of a sample is the drop in the target logit when a short zero patch
(default 40 ms) covering that sample is laid over the explained beat's own window,
one channel at a time, averaged over every patch position that covers the sample.
Positive values mark samples the model needs to call the beat ``target``; negative
values mark samples that argue against it. Zero is the baseline of the z-scored
signal, so the patch reads as "no signal here".

Contract (``register_explainers`` in ``ecgkit/hookspecs.py``): ``occlusion(model,
**params)`` returns ``explain(windows, rr, beat_index, target) -> np.ndarray`` of
shape ``windows[0, beat_index].shape`` = ``(channels, samples)``, where ``windows``
is a ``(1, T, C, S)`` and ``rr`` a ``(1, T, 4)`` torch tensor, and
``model(windows, rr)`` returns logits ``(1, T, n_classes)``.
"""

from __future__ import annotations

import numpy as np

from ecgkit.errors import ConfigError


def occlusion(model, patch_ms: float = 40.0, stride_ms: float = 10.0, fs_hz: float | None = None,
              batch_size: int = 64):
    """Occlusion sensitivity: drop in the target logit under a sliding 40 ms zero patch."""
    import torch  # imported here: every ecgkit command imports every plugin, so keep that cheap

    if patch_ms <= 0 or stride_ms <= 0:
        raise ConfigError(f"occlusion: patch_ms and stride_ms must be positive, got {patch_ms}, {stride_ms}")
    # the window's sampling rate comes from the model's input contract (ms -> samples)
    fs = float(fs_hz or getattr(model, "input_spec", {}).get("fs_hz", 360.0))
    width = max(1, round(patch_ms * fs / 1000.0))
    stride = max(1, round(stride_ms * fs / 1000.0))

    def explain(windows: "torch.Tensor", rr: "torch.Tensor", beat_index: int, target: int) -> np.ndarray:
        if windows.ndim != 4 or windows.shape[0] != 1:
            raise ValueError(f"occlusion: windows must be (1, T, C, S), got {tuple(windows.shape)}")
        _, T, C, S = windows.shape
        if not 0 <= beat_index < T:
            raise IndexError(f"occlusion: beat_index {beat_index} outside 0..{T - 1}")
        w = min(width, S)
        starts = list(range(0, S - w + 1, stride))
        if starts[-1] != S - w:
            starts.append(S - w)  # cover the end of the window too
        patches = [(c, s) for c in range(C) for s in starts]

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                base = model(windows, rr)[0, beat_index, target].item()
                drops = []
                for k in range(0, len(patches), batch_size):
                    chunk = patches[k:k + batch_size]
                    x = windows.repeat(len(chunk), 1, 1, 1)
                    for i, (c, s) in enumerate(chunk):
                        x[i, beat_index, c, s:s + w] = 0.0
                    logits = model(x, rr.expand(len(chunk), -1, -1))
                    drops.append(base - logits[:, beat_index, target])
                drops = torch.cat(drops)
        finally:
            model.train(was_training)

        attribution = torch.zeros(C, S, dtype=torch.float64)
        coverage = torch.zeros(C, S, dtype=torch.float64)
        for (c, s), d in zip(patches, drops.tolist()):
            attribution[c, s:s + w] += d
            coverage[c, s:s + w] += 1.0
        return (attribution / coverage.clamp_min(1.0)).numpy().astype(np.float32)

    return explain
