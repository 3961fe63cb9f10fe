"""The record RR reference counted in sinus cycles (``record_rr_stat: atrial``) and its blocked-P detector.

In 2:1 AV block every long interval holds two sinus cycles, one P wave conducted and one
blocked. ``ecgkit.segment.blocked_p_waves`` finds the blocked ones with the record's own P
wave as the template; ``rr_features(..., record_stat="atrial")`` divides each interval by its
P waves before taking the record mean. Built on real records of the local MIT-BIH copy and
on the DS1 block check's rebuilt rhythm (``benchmarks/rhythm_stress.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgkit.registry import create
from ecgkit.segment import blocked_p_waves, rr_features

FS = 180.0


def test_atrial_reference_divides_each_interval_by_its_p_waves():
    peaks = np.array([0, 100, 200, 400, 500, 700])                  # intervals 1, 1, 2, 1, 2 s at 100 Hz
    blocked = np.array([0, 0, 0, 1, 0, 1])                           # the two long ones hold a blocked P wave
    atrial = rr_features(peaks, 100.0, record_stat="atrial", blocked_p=blocked)
    mean = rr_features(peaks, 100.0)
    pre = np.array([1, 1, 1, 2, 1, 2], float)                        # the first beat takes its post-RR
    assert atrial[0, 3] == pytest.approx(np.mean(pre / (1 + blocked))) == pytest.approx(1.0)
    assert mean[0, 3] == pytest.approx(pre.mean())
    np.testing.assert_array_equal(atrial[:, :3], mean[:, :3])       # only the record column changes
    none = rr_features(peaks, 100.0, record_stat="atrial", blocked_p=np.zeros(6, int))
    np.testing.assert_array_equal(none, mean)                        # no blocked P wave: the mean itself
    with pytest.raises(ValueError, match="blocked_p"):
        rr_features(peaks, 100.0, record_stat="atrial")
    with pytest.raises(ValueError, match="blocked_p"):
        rr_features(peaks, 100.0, record_stat="atrial", blocked_p=np.zeros(5, int))


def _lead(rec, peaks):
    from ecgkit.inference import model_signal

    return model_signal(rec, {"fs_hz": FS}), np.round(np.asarray(peaks) * FS / rec.fs).astype(np.int64)


@pytest.fixture(scope="module")
def block_115(data_dir):
    """DS1's 115 rebuilt by the block check, with and without the blocked P waves drawn."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import rhythm_stress as rs

    from ecgkit.io import read_annotations, read_record

    path = str(data_dir / "115")
    peaks, cls = rs.reference_beats(*read_annotations(path, "atr"))
    labels = np.array(rs.AAMI_CLASSES)[cls]
    rec = read_record(path)
    x = rs.source_signal(rec)
    out = {}
    for drawn in (False, True):
        r, pk, blocked = rs.block_record(rec, peaks, labels, 600, np.random.default_rng(1), x, blocked_p=drawn)
        out[drawn] = (r, pk, blocked)
    return rec, peaks, out


def test_sinus_rhythm_has_no_blocked_p_waves(data_dir, block_115):
    rec, peaks, _ = block_115
    n = blocked_p_waves(*_lead(rec, peaks), FS)
    assert n.shape == peaks.shape and n[0] == 0
    assert (n > 0).sum() <= 2                                        # 115 as recorded: sinus rhythm (0 found here)


def test_the_drawn_blocked_p_waves_of_the_block_check_are_found(block_115):
    _, _, out = block_115
    r, pk, blocked = out[True]
    n = blocked_p_waves(*_lead(r, pk), FS)
    assert blocked[1:].sum() > 100
    assert np.mean(n[blocked] == 1) >= 0.9                           # found, one per 2:1 interval
    assert np.mean(n[~blocked] > 0) <= 0.01                          # and hardly ever in a 1:1 one
    r0, pk0, blocked0 = out[False]
    n0 = blocked_p_waves(*_lead(r0, pk0), FS)
    assert np.array_equal(pk0, pk) and np.mean(n0 > 0) <= 0.01      # not drawn: nothing to find


def test_fibrillation_counts_nothing(data_dir):
    from ecgkit.io import read_annotations, read_record
    from ecgkit.segment import reference_beats

    rec = read_record(str(data_dir / "203"))                          # atrial fibrillation and flutter
    peaks, _ = reference_beats(*read_annotations(rec.path, "atr"))
    x, pos = _lead(rec, peaks)
    assert not blocked_p_waves(x, pos, FS).any()
    assert not blocked_p_waves(np.zeros_like(x), pos, FS).any()      # a flat lead: no template, nothing counted
    assert not blocked_p_waves(x, pos[:1], FS).any()                  # one beat: no interval


def test_the_model_contract_carries_the_atrial_reference_into_its_rr_features(block_115):
    from ecgkit.inference import prepare_record

    model = create("encoders", "transnet", record_rr_stat="atrial")
    assert model.input_spec["record_rr_stat"] == "atrial"
    assert "record_rr_stat" not in create("encoders", "transnet").input_spec
    r, pk, blocked = block_115[2][True]
    atrial = prepare_record(r, pk, model.input_spec)["rr"]
    mean = prepare_record(r, pk, create("encoders", "transnet").input_spec)["rr"]
    one_to_one = np.median(atrial[~blocked, 0])
    assert mean[0, 3] > 1.2 * one_to_one                              # the 2:1 stretches lengthen the mean
    assert atrial[0, 3] == pytest.approx(one_to_one, rel=0.05)        # the sinus cycle is the 1:1 interval
    np.testing.assert_array_equal(atrial[:, :3], mean[:, :3])


def _sinus_sequences():
    """RR features (4, 128, 4) and all-N labels of four sequences of a steady 0.8 s rhythm (3 % jitter)."""
    rng = np.random.default_rng(0)
    pre = 0.8 * (1 + 0.03 * rng.standard_normal(4 * 129))
    peaks = np.round(np.concatenate([[0.0], np.cumsum(pre)]) * 360).astype(np.int64)
    rr = torch.from_numpy(rr_features(peaks, 360.0)[:512].reshape(4, 128, 4).copy())
    return rr, torch.zeros(4, 128, dtype=torch.long)


def test_synthetic_block_rescales_the_atrial_reference_by_sinus_cycles(data_dir):
    from ecgkit.train import synthetic_block

    rr, y = _sinus_sequences()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    mean, sel, two = synthetic_block(rr.clone(), y, g(), 1.0, doubled=True)
    atrial, _, two2 = synthetic_block(rr.clone(), y, g(), 1.0, record_stat="atrial", doubled=True)
    assert sel.all() and torch.equal(two, two2) and torch.equal(mean[..., :3], atrial[..., :3])
    scale = rr[:, 0, 3] / rr[:, :, 0].mean(1)                          # the recorded reference per unit rate
    m = rr[:, :, 0].median(1).values
    assert torch.allclose(atrial[:, 0, 3], scale * m, rtol=0.02)       # the reference is the sinus cycle
    assert (mean[:, 0, 3] > 1.15 * atrial[:, 0, 3]).all()              # the mean takes the doubled intervals


def test_the_benchmarks_probe_swaps_only_the_reference():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ensemble_cv import with_record_rr_stat

    model = create("encoders", "transnet")
    loaded = (model, model.input_spec, {})
    m, spec, meta = with_record_rr_stat(loaded, "atrial")
    assert m is model and spec == {**model.input_spec, "record_rr_stat": "atrial"}
    assert "record_rr_stat" not in model.input_spec                    # the model's own contract untouched
    assert with_record_rr_stat(loaded, None) is loaded
    with pytest.raises(SystemExit, match="record-rr-stat"):
        with_record_rr_stat(loaded, "mode")


def test_a_checkpoint_naming_an_unknown_record_reference_is_a_one_line_error(data_dir, tmp_path):
    """A third-party contract with a record_rr_stat ecgkit cannot build fails at load, not per record."""
    from click.testing import CliRunner

    from ecgkit.checkpoint import save_checkpoint
    from ecgkit.cli import cli

    model = create("encoders", "transnet", d_model=16, n_layers=1, n_heads=2)
    model.input_spec = {**model.input_spec, "record_rr_stat": "mode"}
    ck = save_checkpoint(tmp_path / "odd.pt", model, encoder="transnet",
                         params={"d_model": 16, "n_layers": 1, "n_heads": 2})
    out = tmp_path / "ann"
    res = CliRunner().invoke(cli, ["annotate", str(data_dir / "100"), "--model", str(ck), "--out", str(out)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "unknown record_rr_stat 'mode'" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())                 # no partial output


# --- the local mean counted in sinus cycles (local_rr_stat: atrial) ------------------------------

def test_atrial_local_mean_divides_the_recent_intervals_by_their_p_waves():
    peaks = np.cumsum([0, 100] + [200] * 12 + [100] * 4)  # 1 s, 12 x 2 s (2:1 block), 4 x 1 s (1:1); 100 Hz
    blocked = np.r_[0, 0, np.ones(12, int), np.zeros(4, int)]
    plain = rr_features(peaks, 100.0, record_stat="atrial", blocked_p=blocked)
    local = rr_features(peaks, 100.0, record_stat="atrial", blocked_p=blocked, local_stat="atrial")
    first = 14                                                        # the first beat after 1:1 conduction returns
    assert plain[first, 2] == pytest.approx((9 * 2 + 1) / 10)          # plain: mostly doubled intervals
    assert plain[first, 0] / plain[first, 2] < 0.6                     # so it looks premature
    assert local[:, 2] == pytest.approx(np.ones(len(peaks)))           # in sinus cycles: one second throughout
    np.testing.assert_array_equal(local[:, [0, 1, 3]], plain[:, [0, 1, 3]])  # only the local column changes
    none = rr_features(peaks, 100.0, blocked_p=np.zeros(len(peaks), int), local_stat="atrial")
    np.testing.assert_array_equal(none, rr_features(peaks, 100.0))     # nothing blocked: the plain local mean
    with pytest.raises(ValueError, match="blocked_p"):
        rr_features(peaks, 100.0, local_stat="atrial")
    with pytest.raises(ValueError, match="local_stat"):
        rr_features(peaks, 100.0, local_stat="median")


def test_the_model_contract_carries_the_atrial_local_mean_on_the_block_check(block_115):
    from ecgkit.inference import prepare_record

    model = create("encoders", "transnet", record_rr_stat="atrial", local_rr_stat="atrial")
    assert model.input_spec["local_rr_stat"] == "atrial"
    assert "local_rr_stat" not in create("encoders", "transnet", record_rr_stat="atrial").input_spec
    r, pk, blocked = block_115[2][True]
    both = prepare_record(r, pk, model.input_spec)["rr"]
    rec_only = prepare_record(r, pk, create("encoders", "transnet", record_rr_stat="atrial").input_spec)["rr"]
    np.testing.assert_array_equal(both[:, [0, 1, 3]], rec_only[:, [0, 1, 3]])
    one_to_one = np.median(both[~blocked, 0])
    after = np.flatnonzero(~blocked[1:] & blocked[:-1]) + 1            # first 1:1 beats after a 2:1 stretch
    assert after.size >= 3
    assert np.median(rec_only[after, 0] / rec_only[after, 2]) < 0.7    # plain local mean: they look premature
    assert np.median(both[after, 0] / both[after, 2]) == pytest.approx(1.0, abs=0.1)
    assert np.median(both[:, 2]) == pytest.approx(one_to_one, rel=0.05)
    with pytest.raises(Exception, match="local_rr_stat"):
        create("encoders", "transnet", local_rr_stat="median")


def test_synthetic_block_counts_the_local_mean_in_sinus_cycles_when_asked():
    from ecgkit.train import synthetic_block

    rr, y = _sinus_sequences()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain, _, two = synthetic_block(rr.clone(), y, g(), 1.0, record_stat="atrial", doubled=True)
    local, _, two2 = synthetic_block(rr.clone(), y, g(), 1.0, record_stat="atrial", doubled=True,
                                     local_stat="atrial")
    assert torch.equal(two, two2) and torch.equal(plain[..., [0, 1, 3]], local[..., [0, 1, 3]])
    m = rr[:, :, 0].median(1).values[:, None]
    assert (local[..., 2] / m - 1).abs().max() < 0.1                   # about one sinus cycle everywhere
    assert (plain[..., 2] / m).max() > 1.8                             # the plain mean doubles inside block


def test_the_benchmarks_probe_can_swap_the_local_mean_alone():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ensemble_cv import with_record_rr_stat

    model = create("encoders", "transnet", record_rr_stat="atrial")
    loaded = (model, model.input_spec, {})
    _, spec, _ = with_record_rr_stat(loaded, None, "atrial")
    assert spec == {**model.input_spec, "local_rr_stat": "atrial"}
    with pytest.raises(SystemExit, match="local-rr-stat"):
        with_record_rr_stat(loaded, None, "median")


def test_a_contract_naming_an_unknown_local_mean_is_refused():
    from ecgkit.errors import ConfigError
    from ecgkit.inference import check_channels

    spec = create("encoders", "transnet").input_spec
    check_channels({**spec, "local_rr_stat": "atrial"})
    with pytest.raises(ConfigError, match="unknown local_rr_stat 'mode'"):
        check_channels({**spec, "local_rr_stat": "mode"})


# --- pre- and post-RR counted in sinus cycles (interval_rr_stat: atrial) ---------------------------

def test_atrial_intervals_read_a_2_1_interval_as_one_cycle():
    peaks = np.cumsum([0, 100] + [200] * 5 + [100] * 4)              # 1 s, 5 x 2 s (2:1 block), 4 x 1 s; 100 Hz
    blocked = np.r_[0, 0, np.ones(5, int), np.zeros(4, int)]
    raw = rr_features(peaks, 100.0, record_stat="atrial", blocked_p=blocked, local_stat="atrial")
    cyc = rr_features(peaks, 100.0, record_stat="atrial", blocked_p=blocked, local_stat="atrial",
                      interval_stat="atrial")
    assert raw[1, 1] == pytest.approx(2.0) and raw[2, 0] == pytest.approx(2.0)  # as measured: a pause
    np.testing.assert_allclose(cyc, np.ones_like(cyc))               # in sinus cycles: a regular rhythm
    np.testing.assert_array_equal(cyc[:, 2:], raw[:, 2:])            # the references are unchanged
    none = rr_features(peaks, 100.0, blocked_p=np.zeros(len(peaks), int), interval_stat="atrial")
    np.testing.assert_array_equal(none, rr_features(peaks, 100.0))   # nothing blocked: as measured
    with pytest.raises(ValueError, match="blocked_p"):
        rr_features(peaks, 100.0, interval_stat="atrial")
    with pytest.raises(ValueError, match="interval_stat"):
        rr_features(peaks, 100.0, interval_stat="seconds")


def test_the_block_check_reads_as_a_regular_rhythm_in_sinus_cycles(block_115):
    from ecgkit.inference import prepare_record

    keys = dict(record_rr_stat="atrial", local_rr_stat="atrial")
    model = create("encoders", "transnet", interval_rr_stat="atrial", **keys)
    assert model.input_spec["interval_rr_stat"] == "atrial"
    assert "interval_rr_stat" not in create("encoders", "transnet", **keys).input_spec
    r, pk, blocked = block_115[2][True]
    cyc = prepare_record(r, pk, model.input_spec)["rr"]
    raw = prepare_record(r, pk, create("encoders", "transnet", **keys).input_spec)["rr"]
    before = np.flatnonzero(blocked[1:] & ~blocked[:-1])              # the last 1:1 beat before a 2:1 interval
    assert before.size >= 3
    assert np.median(raw[before, 1] / raw[before, 2]) > 1.8           # as measured: a pause after it
    assert np.median(cyc[before, 1] / cyc[before, 2]) == pytest.approx(1.0, abs=0.1)
    assert np.mean(np.abs(cyc[:, 0] / cyc[:, 2] - 1) < 0.15) > 0.95   # nearly every beat on time


def test_atrial_intervals_refuse_cut_next_and_unknown_values():
    from ecgkit.errors import ConfigError
    from ecgkit.inference import check_channels

    with pytest.raises(ConfigError, match="cut_next_s"):
        create("encoders", "transnet", interval_rr_stat="atrial", cut_next_s=0.1)
    with pytest.raises(ConfigError, match="interval_rr_stat"):
        create("encoders", "transnet", interval_rr_stat="seconds")
    spec = create("encoders", "transnet").input_spec
    check_channels({**spec, "interval_rr_stat": "atrial"})
    with pytest.raises(ConfigError, match="unknown interval_rr_stat 'seconds'"):
        check_channels({**spec, "interval_rr_stat": "seconds"})
    with pytest.raises(ConfigError, match="cut_next_s"):
        check_channels({**spec, "interval_rr_stat": "atrial", "cut_next_s": 0.1})


def test_synthetic_block_gives_sinus_cycles_when_asked():
    from ecgkit.train import synthetic_block

    rr, y = _sinus_sequences()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    keys = dict(record_stat="atrial", local_stat="atrial", doubled=True)
    raw, _, two = synthetic_block(rr.clone(), y, g(), 1.0, **keys)
    cyc, _, two2 = synthetic_block(rr.clone(), y, g(), 1.0, interval_stat="atrial", **keys)
    assert torch.equal(two, two2) and torch.equal(raw[..., 2:], cyc[..., 2:])
    m = rr[:, :, 0].median(1).values[:, None]
    assert (raw[..., 1][two] / m.expand_as(two)[two]).min() > 1.8    # post-RR of a 2:1 interval, as measured
    assert ((cyc[..., :2] / m[..., None] - 1).abs() < 0.15).all()     # in sinus cycles: about one


def test_counts_outside_a_run_are_dropped_when_asked():
    from ecgkit.segment import _in_runs

    n = np.array([0, 1, 0, 1, 1, 0, 2, 1, 1, 0, 1])
    np.testing.assert_array_equal(_in_runs(n, 2), [0, 0, 0, 1, 1, 0, 2, 1, 1, 0, 0])
    np.testing.assert_array_equal(_in_runs(n, 3), [0, 0, 0, 0, 0, 0, 2, 1, 1, 0, 0])
    np.testing.assert_array_equal(_in_runs(np.zeros(4, int), 2), np.zeros(4))


def test_lone_pauses_are_not_counted_in_sinus_cycle_intervals(data_dir, block_115):
    """The S-majority check's pauses after ectopic runs (118) hold P-like waves the detector counts
    alone; 2:1 block repeats, so a run of two keeps it (115's block check) and drops them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import rhythm_stress as rs

    from ecgkit.io import read_annotations, read_record

    rec = read_record(str(data_dir / "118"))
    peaks, cls = rs.reference_beats(*read_annotations(rec.path, "atr"))
    labels = np.array(rs.AAMI_CLASSES)[cls]
    rng = np.random.default_rng([0, 118])
    x = rs.source_signal(rec)
    rs.synthetic_record(rec, peaks, labels, "sparse", 1800, rng, x)   # the check's draws, in its order
    r, p, _ = rs.synthetic_record(rec, peaks, labels, "majority", 1800, rng, x)
    lead = _lead(r, p)
    assert (blocked_p_waves(*lead, FS) > 0).sum() >= 5                  # lone pauses counted
    assert not blocked_p_waves(*lead, FS, min_run=2).any()               # none repeats
    from ecgkit.inference import prepare_record

    keys = dict(record_rr_stat="atrial", local_rr_stat="atrial")
    cyc = prepare_record(r, p, create("encoders", "transnet", interval_rr_stat="atrial", **keys).input_spec)["rr"]
    raw = prepare_record(r, p, create("encoders", "transnet", **keys).input_spec)["rr"]
    np.testing.assert_array_equal(cyc[:, :2], raw[:, :2])             # the model's intervals: no pause halved
    r, pk, blocked = block_115[2][True]
    assert np.mean(blocked_p_waves(*_lead(r, pk), FS, min_run=2)[blocked] == 1) >= 0.9


# --- the run of blocked P waves a contract counts them in (blocked_p_min_run) -----------------------

def test_the_contract_names_the_run_a_blocked_p_wave_is_counted_in(data_dir):
    """201 (DS1, no AV block) holds one run of two intervals with a P-like wave: the default run of two
    keeps it, a contract asking for three drops it; every count is the detector's at that run."""
    from ecgkit.datasets.mitdb import reference_beats
    from ecgkit.inference import blocked_p_min_run, prepare_record
    from ecgkit.io import read_annotations, read_record

    rec = read_record(str(data_dir / "201"))
    peaks, _ = reference_beats(*read_annotations(rec.path, "atr"))
    keys = dict(record_rr_stat="atrial", local_rr_stat="atrial", interval_rr_stat="atrial")
    two = create("encoders", "transnet", **keys).input_spec
    three = create("encoders", "transnet", blocked_p_min_run=3, **keys).input_spec
    assert "blocked_p_min_run" not in two and three["blocked_p_min_run"] == 3
    assert blocked_p_min_run(two) == 2 and blocked_p_min_run(three) == 3
    assert blocked_p_min_run({"record_rr_stat": "atrial"}) == 1          # the record reference alone: every one
    lead = _lead(rec, peaks)
    counted = blocked_p_waves(*lead, FS, min_run=2)
    assert (counted > 0).sum() == 2 and not blocked_p_waves(*lead, FS, min_run=3).any()
    rr2, rr3 = prepare_record(rec, peaks, two)["rr"], prepare_record(rec, peaks, three)["rr"]
    raw = prepare_record(rec, peaks, create("encoders", "transnet", record_rr_stat="atrial",
                                            local_rr_stat="atrial").input_spec)["rr"]
    i = np.flatnonzero(counted)
    np.testing.assert_allclose(rr2[i, 0], raw[i, 0] / 2, rtol=1e-6)    # the run of two: halved
    np.testing.assert_array_equal(rr3[:, :2], raw[:, :2])                # the run of three: none counted


def test_a_bad_blocked_p_min_run_is_refused():
    from ecgkit.ensemble import Ensemble
    from ecgkit.errors import ConfigError
    from ecgkit.inference import check_channels

    keys = dict(record_rr_stat="atrial")
    for bad in (-1, 2.5, "3"):
        with pytest.raises(ConfigError, match="blocked_p_min_run"):
            create("encoders", "transnet", blocked_p_min_run=bad, **keys)
    spec = create("encoders", "transnet", **keys).input_spec
    for bad in (0, True, 1.0):
        with pytest.raises(ConfigError, match="integer >= 1"):
            check_channels({**spec, "blocked_p_min_run": bad})
    with pytest.raises(ConfigError, match="only an 'atrial'"):                 # no detector runs without one
        create("encoders", "transnet", blocked_p_min_run=3)
    a = create("encoders", "transnet", blocked_p_min_run=3, **keys)
    b = create("encoders", "transnet", **keys)
    with pytest.raises(ConfigError, match="blocked_p_min_run differs"):
        Ensemble([a, b])
    Ensemble([a, create("encoders", "transnet", blocked_p_min_run=3, **keys)])


def test_the_benchmarks_probe_can_swap_the_run():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ensemble_cv import with_record_rr_stat

    model = create("encoders", "transnet", record_rr_stat="atrial")
    loaded = (model, model.input_spec, {})
    _, spec, _ = with_record_rr_stat(loaded, None, min_run=3)
    assert spec == {**model.input_spec, "blocked_p_min_run": 3} and "blocked_p_min_run" not in model.input_spec
    with pytest.raises(SystemExit, match="integer >= 1"):
        with_record_rr_stat(loaded, None, min_run=0)
