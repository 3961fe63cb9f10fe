"""ECG-TransNet: beat-level sequence labelling of ECG with a ResNet tokenizer and a Transformer.

Reads top-down:
  1. TransNetConfig   - every hyper-parameter, including what the data prep must produce.
  2. building blocks  - ResBlock1d, BeatTokenizer (learned morphology), ContextFeatures (RR ratios + shape-vs-median).
  3. ECGTransNet      - tokens + context embedding + position -> Transformer encoder -> per-beat logits.

Data contract (what the caller / core must feed)
------------------------------------------------
Per record: lead MLII (chosen by signal name; in MIT-BIH it is channel 0 except record 114, where it is
channel 1), Butterworth band-pass 0.5-35 Hz (scipy butter(2, ..., btype='band'), zero-phase sosfiltfilt), resampled to
``fs_hz`` with scipy.signal.resample_poly, then z-scored per record (mean/std of the whole filtered signal).

windows: (batch, beats, channels, samples) float32, samples = before + after, the beat's R position at
    index ``before`` (reference annotation sample converted to ``fs_hz`` by rounding). Beats too close to the
    record edge are zero-padded (the signal is z-scored, so 0 is the baseline), never dropped.
    channel 0 "beat":                      the window itself.
    channel 1 "beat_minus_record_median":  window minus the record's median beat, where the median beat is the
                                           element-wise median over the windows of ALL beats of that record.
                                           It carries "this beat relative to the same patient's usual beat",
                                           which transfers across patients far better than absolute shape.
    optional "lead2", "lead2_minus_record_median": the same two from the record's second lead (its first other
                                           channel: V1 in most MIT-BIH records), prepared the same way.
rr: (batch, beats, 4) float32, seconds, columns [pre_rr, post_rr, local_mean_rr, record_mean_rr]:
    pre_rr[i]  = t[i] - t[i-1];  post_rr[i] = t[i+1] - t[i]   (t = beat times of all annotated beats)
    edge beats: first beat pre_rr = its post_rr, last beat post_rr = its pre_rr.
    local_mean_rr[i] = mean(pre_rr[max(0, i-9) .. i])  i.e. mean of the 10 most recent RR intervals
                       INCLUDING the current pre_rr (fewer at the start of the record); causal.
    record_mean_rr   = mean of pre_rr over all beats of the record (same value for every beat).
pad_mask: (batch, beats) bool, True where the position is padding (ignored by attention).
returns logits: (batch, beats, n_classes) for AAMI classes in the order of ``classes``.

Inference (as validated): cut each record into chunks of ``seq_len`` consecutive beats with 50 % overlap (the
last chunk flush with the record end), average the per-beat log-softmax over the chunks covering a beat with
a Hann weight (centre of a chunk trusted most), argmax. A record shorter than ``seq_len`` is one chunk.
Chunks should hold beats of ONE record: the token-median reference below assumes a single patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


# ----------------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TransNetConfig:
    # --- data contract ---
    fs_hz: float = 180.0                 # model sampling rate (MIT-BIH 360 Hz resampled 1:2)
    before: int = 64                     # samples before R (0.356 s at 180 Hz: covers the P wave)
    after: int = 80                      # samples after R (0.444 s: covers the T wave)
    channels: list[str] = field(default_factory=lambda: ["beat", "beat_minus_record_median"])
    classes: list[str] = field(default_factory=lambda: ["N", "S", "V", "F", "Q"])
    n_classes: int = 5
    seq_len: int = 256                   # beats per sequence (train crops; inference chunks of the same length)
    max_len: int = 512                   # size of the learned positional table
    local_rr_beats: int = 10             # local_mean_rr = mean of the last 10 pre-RR (documentation of the contract)
    bandpass_hz: tuple[float, float] = (0.5, 35.0)
    # --- tokenizer (1D ResNet) ---
    stem_channels: int = 16
    block_channels: tuple[int, ...] = (16, 32, 48)  # one stride-2 residual block per entry
    kernel_size: int = 7
    pool_bins: int = 4                   # adaptive-pool to a few bins so the token keeps WHERE things happen (P wave)
    # --- transformer ---
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.2
    token_dropout: float = 0.0           # optional: drop whole morphology tokens in training (forces use of context)
    morph_stats: bool = True             # hand-made, patient-relative shape scalars (needs the median channel)
    use_token: bool = True               # ablation switch: False = context features only (no learned morphology)
    rel_token: bool = True               # also feed token minus the sequence-median token (patient-relative shape)
    absolute_rr: bool = False            # also feed log(local mean RR / 1 s): the local heart rate itself, which
                                         # separates 1:1 conduction after 2:1 AV block (normal rate after a slow
                                         # one) from an ectopic run (a fast rate after a normal one)
    prev_rr: bool = False                # also feed log(pre-RR / the previous beat's pre-RR): how abruptly the
                                         # beat came, against the interval just before it. A PAC comes abruptly;
                                         # the fast phase of sinus arrhythmia comes in step (0.94-0.99 of the
                                         # interval before), though both are short against the local and record
                                         # means. Read within the model's sequence (0 for its first beat).
    rr_irregularity: bool = False        # also feed the local irregularity: the median over the last 10 beats of
                                         # |log(pre-RR / previous pre-RR)| (log-scaled), read within the sequence.
                                         # Atrial fibrillation is irregular beat after beat, sinus rhythm is not, and
                                         # a few premature beats do not move a median: with prev_rr, an abrupt beat
                                         # in an irregular rhythm need not be ectopic
    record_rr: bool = True               # the three RR ratios to the record mean (pre, post, local mean vs record);
                                         # False = prematurity against the local rhythm only (log pre/local,
                                         # post/local, post/pre): a stretch at a steady rate looks sinus however
                                         # much slower the rest of the record is (1:1 conduction between 2:1 AV block)
    record_rr_stat: str = "mean"         # the record-level RR reference the three record ratios divide by: the mean
                                         # of the record's intervals, or "median", the usual interval, which long
                                         # pauses and 2:1 AV block do not lengthen (the mean makes a steady 1:1
                                         # stretch between 2:1 stretches look premature), or "atrial", the mean
                                         # sinus cycle (each interval divided by its P waves, blocked ones
                                         # counted by ecgkit.segment.blocked_p_waves); read by ecgkit from
                                         # input_spec when it builds the RR features
    local_rr_stat: str = "mean"          # the local mean RR the pre/post ratios divide by: the mean of the last
                                         # local_rr_beats intervals, or "atrial", those intervals counted in sinus
                                         # cycles (each divided by its P waves, as record_rr_stat "atrial"), so the
                                         # first 1:1 beats after 2:1 AV block are not premature against the doubled
                                         # intervals before them; read by ecgkit from input_spec
    interval_rr_stat: str = "raw"        # pre- and post-RR as measured, or "atrial": each interval divided by its
                                         # P waves, so a 2:1 interval reads as one sinus cycle (not with cut_next_s,
                                         # which reads the next R from post-RR in seconds); read from input_spec
    blocked_p_min_run: int = 0           # > 0: the atrial stats count a blocked P wave only in a run of at least this
                                         # many consecutive intervals that have one (0: ecgkit's default, 2 with
                                         # interval_rr_stat "atrial", else 1); read by ecgkit from input_spec
    cut_next_s: float = 0.0              # > 0: each window stops this many seconds before the NEXT beat's R (its
                                         # samples from there on hold the last value): a window longer than the
                                         # interval shows the next P wave but never the next QRS, so with a wide
                                         # ``after`` a beat ending a 2:1 AV block interval shows the blocked P wave
                                         # with no QRS after it; the cut follows the post-RR the model is given
    shape_head: float = 0.0              # > 0: training-only auxiliary loss (this weight x BCE): a linear head on the
                                         # morphology token ALONE says "ventricular (V) or not (N, S)", so the tokenizer
                                         # must encode V by shape, not leave it to rhythm (F, Q beats not scored)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_samples(self) -> int:
        return self.before + self.after


# ----------------------------------------------------------------------------------------------------------
# 2. Building blocks
# ----------------------------------------------------------------------------------------------------------
class ResBlock1d(nn.Module):
    """Basic post-activation residual block: conv-bn-relu-conv-bn + (strided 1x1 conv-bn) shortcut, relu."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, k, padding=k // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.short = (
            nn.Identity()
            if (stride == 1 and c_in == c_out)
            else nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))
        )

    def forward(self, x: Tensor) -> Tensor:  # (n, c_in, L) -> (n, c_out, L/stride)
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.short(x))


class BeatTokenizer(nn.Module):
    """Learnable morphology tokenizer: one beat window -> one d_model token."""

    def __init__(self, cfg: TransNetConfig):
        super().__init__()
        k = cfg.kernel_size
        self.stem = nn.Sequential(
            nn.Conv1d(cfg.n_channels, cfg.stem_channels, k, padding=k // 2, bias=False),
            nn.BatchNorm1d(cfg.stem_channels),
            nn.ReLU(),
        )
        blocks, c = [], cfg.stem_channels
        for c_out in cfg.block_channels:
            blocks.append(ResBlock1d(c, c_out, k, stride=2))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        # Adaptive pooling to a few bins (not global): the position of a deflection relative to R
        # (early P wave, wide QRS) is diagnostic, global averaging would throw it away.
        self.pool = nn.AdaptiveAvgPool1d(cfg.pool_bins)
        self.proj = nn.Linear(c * cfg.pool_bins, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:  # (n, C, S) -> (n, d_model)
        h = self.blocks(self.stem(x))         # (n, c, S/2^blocks)
        h = self.pool(h).flatten(1)           # (n, c*pool_bins)
        return self.proj(h)                   # (n, d_model)


class ContextFeatures(nn.Module):
    """Scale-free per-beat scalars -> d_model embedding.

    RR part (6): log-ratios only, no absolute RR: prematurity relative to the patient's own local and overall
    rhythm is what carries across patients; absolute heart rate mostly identifies the patient. With
    ``absolute_rr`` (off by default) one more scalar, the log local mean RR in seconds: rate ratios alone
    cannot tell 1:1 conduction returning after 2:1 AV block (N) from a run of ectopic beats (S). With
    ``record_rr`` off, the three ratios to the record mean are dropped (3 RR scalars): prematurity is then
    judged against the local rhythm only. With ``prev_rr`` (off by default) one more scalar, the log of the
    pre-RR against the previous beat's pre-RR: an abrupt premature beat against one in step with the beat before.
    With ``rr_irregularity`` (off by default) another, the log median size of that step over the last ten beats:
    high in atrial fibrillation, at the sinus level when one beat in ten is premature.
    Morphology part (5, when the median channel is present): similarity of the beat to the record's median beat
    (median = channel0 - channel1), over the whole window, the QRS and the P-wave region, plus energy ratios.
    These are exactly the cues of the classic "premature AND normal-looking -> S" rule, given explicitly so the
    network need not re-derive them from patient-specific shapes.
    """

    n_rr = 6
    n_morph = 5

    def __init__(self, cfg: TransNetConfig):
        super().__init__()
        self.cfg = cfg
        self.use_morph = cfg.morph_stats and cfg.n_channels >= 2
        # (beat, beat - median) channel pairs the shape scalars are computed on: channels 0/1, and the
        # second lead's pair when the model reads one (the P wave is often clearer there, e.g. in V1)
        self.pairs = [(0, 1)] if self.use_morph else []
        if self.use_morph and {"lead2", "lead2_minus_record_median"} <= set(cfg.channels):
            self.pairs.append((cfg.channels.index("lead2"), cfg.channels.index("lead2_minus_record_median")))
        self.absolute_rr = cfg.absolute_rr
        self.record_rr = cfg.record_rr
        self.n_rr = 6 if self.record_rr else 3
        self.prev_rr = cfg.prev_rr
        self.rr_irregularity = cfg.rr_irregularity
        n_in = (self.n_rr + int(self.absolute_rr) + int(self.prev_rr) + int(self.rr_irregularity)
                + self.n_morph * len(self.pairs))
        fs, b = cfg.fs_hz, cfg.before
        self.qrs = slice(max(0, b - round(0.08 * fs)), b + round(0.08 * fs))   # R +- 80 ms
        self.pw = slice(max(0, b - round(0.30 * fs)), max(1, b - round(0.08 * fs)))  # P wave / PR segment
        self.mlp = nn.Sequential(nn.Linear(n_in, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, cfg.d_model))

    @staticmethod
    def rr_features(rr: Tensor) -> Tensor:  # (B, T, 4) seconds -> (B, T, 6)
        rr = rr.clamp_min(1e-2)  # padded / degenerate positions stay finite
        pre, post, loc, rec = rr.unbind(-1)
        f = torch.stack(
            [
                torch.log(pre / loc),    # prematurity vs local rhythm (the key S/V cue)
                torch.log(post / loc),   # compensatory pause
                torch.log(pre / rec),    # prematurity vs the whole record
                torch.log(post / rec),
                torch.log(post / pre),   # short-long pattern
                torch.log(loc / rec),    # local rate vs record (runs, tachycardia episodes)
            ],
            dim=-1,
        )
        return f.clamp(-3.0, 3.0)

    LOCAL_RR = (0, 1, 4)  # the columns of rr_features that do not read the record mean

    @staticmethod
    def _corr(a: Tensor, b: Tensor) -> Tensor:  # (..., S), (..., S) -> (...)
        a = a - a.mean(-1, keepdim=True)
        b = b - b.mean(-1, keepdim=True)
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)

    def morph_features(self, windows: Tensor, i: int = 0, j: int = 1) -> Tensor:  # (B, T, C, S) -> (B, T, 5)
        """Shape scalars of the beat in channel ``i`` against its record median (``i`` minus channel ``j``)."""
        beat, med = windows[:, :, i], windows[:, :, i] - windows[:, :, j]  # (B, T, S) each
        rms = lambda z: z.pow(2).mean(-1).add(1e-6).sqrt()
        f = torch.stack(
            [
                self._corr(beat, med),
                self._corr(beat[..., self.qrs], med[..., self.qrs]),
                self._corr(beat[..., self.pw], med[..., self.pw]),
                torch.log(rms(windows[:, :, j]) / rms(med)),                    # how different, relative
                torch.log(rms(beat[..., self.qrs]) / rms(med[..., self.qrs])),  # QRS energy vs usual
            ],
            dim=-1,
        )
        return f.clamp(-3.0, 3.0)

    def forward(self, windows: Tensor, rr: Tensor) -> Tensor:  # -> (B, T, d_model)
        r = self.rr_features(rr)
        f = [r if self.record_rr else r[..., list(self.LOCAL_RR)]] + [self.morph_features(windows, i, j) for i, j in self.pairs]
        if self.absolute_rr:  # local rate in seconds, log-scaled: 0 at 60 bpm
            f.append(torch.log(rr[..., 2:3].clamp_min(1e-2)).clamp(-3.0, 3.0))
        if self.prev_rr:      # pre-RR against the previous beat's pre-RR, 0 for the sequence's first beat
            f.append(self.step_feature(rr))
        if self.rr_irregularity:
            f.append(self.irregularity_feature(rr))
        return self.mlp(torch.cat(f, dim=-1))

    @staticmethod
    def step_feature(rr: Tensor) -> Tensor:  # (B, T, 4) seconds -> (B, T, 1)
        """log(pre-RR / the previous beat's pre-RR), clamped to +-3; 0 for the first beat of the sequence."""
        pre = rr[..., 0].clamp_min(1e-2)
        prev = torch.cat([pre[:, :1], pre[:, :-1]], dim=1)
        return torch.log(pre / prev).clamp(-3.0, 3.0)[..., None]

    IRREGULARITY_BEATS = 10

    @classmethod
    def irregularity_feature(cls, rr: Tensor) -> Tensor:  # (B, T, 4) seconds -> (B, T, 1)
        """log(0.01 + median over the last 10 beats of |step|), step as :meth:`step_feature`; the sequence's
        first beats use the steps they have (the first beat's step is 0)."""
        step = cls.step_feature(rr)[..., 0].abs()                     # (B, T)
        k = cls.IRREGULARITY_BEATS
        padded = torch.cat([step[:, :1].expand(-1, k - 1), step], dim=1)  # (B, T + k - 1)
        med = padded.unfold(1, k, 1).median(-1).values                 # (B, T)
        return torch.log(0.01 + med).clamp(-5.0, 3.0)[..., None]


# ----------------------------------------------------------------------------------------------------------
# 3. The model
# ----------------------------------------------------------------------------------------------------------
class ECGTransNet(nn.Module):
    """Per-beat classifier: morphology token + context (RR/shape-vs-median) embedding + position -> Transformer."""

    def __init__(self, cfg: TransNetConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tokenizer = BeatTokenizer(cfg)
        self.ctx_embed = ContextFeatures(cfg)
        # token + (token - median token of the sequence): the median over ~64 beats of one patient is that
        # patient's dominant beat in feature space, so the difference says "unusual for THIS patient".
        self.tok_mix = nn.Linear(2 * d, d) if cfg.rel_token else nn.Identity()
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, d))  # learned positions (neighbour order matters)
        nn.init.normal_(self.pos, std=0.02)
        self.in_norm = nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.n_heads,
            dim_feedforward=cfg.ff_mult * d,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,  # pre-norm: stable with small data and no warm-up tricks
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_classes)
        self.shape_head = nn.Linear(d, 1) if cfg.shape_head > 0 else None
        self._nsv = [cfg.classes.index(c) for c in "NSV"] if self.shape_head is not None else []
        self._shape_logit: Tensor | None = None  # (B, T) of the last training forward, for auxiliary_loss

    def auxiliary_loss(self, targets: Tensor) -> Tensor:
        """The training-only shape-head loss of the last forward; ``targets`` (B, T) class indices, -1 unlabelled.

        ecgkit's training loop adds this to the classification loss when the model defines it.
        Zero (no head, or eval mode) when ``shape_head`` is 0.
        """
        if self.shape_head is None or self._shape_logit is None:
            return torch.zeros(())
        n, s, v = self._nsv
        scored = (targets == n) | (targets == s) | (targets == v)
        if not scored.any():
            return self._shape_logit.sum() * 0.0
        logit, is_v = self._shape_logit[scored], (targets[scored] == v).float()
        return self.cfg.shape_head * F.binary_cross_entropy_with_logits(logit, is_v)

    def cut_next(self, windows: Tensor, rr: Tensor) -> Tensor:
        """``windows`` (B, T, C, S) held at their last value from ``cut_next_s`` before the next beat's R on.

        The next R is ``rr[..., 1]`` (post-RR, seconds) after the beat's own, at window index ``before``.
        A no-op when ``cut_next_s`` is 0 or the next beat lies beyond the window.
        """
        if self.cfg.cut_next_s <= 0:
            return windows
        S = windows.shape[-1]
        cut = self.cfg.before + torch.round((rr[..., 1] - self.cfg.cut_next_s) * self.cfg.fs_hz)
        cut = cut.clamp(self.cfg.before + 1, S).long()                       # (B, T) first held sample
        idx = torch.minimum(torch.arange(S, device=windows.device), cut[..., None] - 1)  # (B, T, S)
        return windows.gather(-1, idx[:, :, None, :].expand_as(windows))

    def forward(self, windows: Tensor, rr: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        windows = self.cut_next(windows, rr)
        B, T, C, S = windows.shape                                   # (B, T, C, S)
        tok = self.tokenizer(windows.reshape(B * T, C, S))           # (B*T, d)
        tok = tok.view(B, T, -1)                                     # (B, T, d)
        self._shape_logit = self.shape_head(tok)[..., 0] if (self.training and self.shape_head is not None) else None
        if not self.cfg.use_token:
            tok = torch.zeros_like(tok)
        if self.training and self.cfg.token_dropout > 0:
            keep = torch.rand(B, T, 1, device=tok.device) >= self.cfg.token_dropout
            tok = tok * keep
        if self.cfg.rel_token:
            ref = tok if pad_mask is None else tok.masked_fill(pad_mask[..., None], float("nan"))
            med = ref.nanmedian(dim=1, keepdim=True).values                   # (B, 1, d) patient's usual beat
            tok = self.tok_mix(torch.cat([tok, tok - med], dim=-1))           # (B, T, d)
        x = tok + self.ctx_embed(windows, rr) + self.pos[:T]                   # (B, T, d)
        x = self.encoder(self.in_norm(x), src_key_padding_mask=pad_mask)  # (B, T, d)
        return self.head(self.out_norm(x))                           # (B, T, n_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
