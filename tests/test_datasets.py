"""MIT-BIH record lists, AAMI classes, the de Chazal splits, patient folds, data lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgkit.datasets import data_dir as resolve_data_dir
from ecgkit.datasets import iter_records, resolve_records
from ecgkit.datasets.mitdb import (AAMI_CLASSES, AAMI_MAP, DS1, DS2, PACED, RECORDS, aami_class,
                                   patient_kfold, reference_beats, split_records)
from ecgkit.errors import ConfigError, DataError, RecordError

AAMI_GROUPS = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}


@pytest.mark.parametrize("cls, symbols", sorted(AAMI_GROUPS.items()))
def test_aami_mapping(cls, symbols):
    for s in symbols:
        assert aami_class(s) == cls, s


def test_aami_mapping_is_exactly_de_chazal():
    assert AAMI_CLASSES == ("N", "S", "V", "F", "Q")
    assert set(AAMI_MAP) == set("".join(AAMI_GROUPS.values()))
    for s in ["+", "~", "|", "x", "!", '"', "[", "]", "p", "t", "u", "B", "?", "r", "n"]:
        assert aami_class(s) is None, s


def test_reference_beats_keeps_aami_beats_as_class_indices():
    samples, labels = reference_beats([1, 5, 9, 12, 20, 30], ["+", "N", "V", "~", "A", "/"])
    np.testing.assert_array_equal(samples, [5, 9, 20, 30])
    np.testing.assert_array_equal(labels, [0, 2, 1, 4])


def test_splits():
    assert len(RECORDS) == 48 and len(set(RECORDS)) == 48
    assert len(DS1) == 22 and len(DS2) == 22
    assert len(set(DS1)) == 22 and len(set(DS2)) == 22
    assert not set(DS1) & set(DS2)
    assert not (set(DS1) | set(DS2)) & set(PACED)
    assert set(PACED) == {"102", "104", "107", "217"}
    assert set(DS1) | set(DS2) | set(PACED) == set(RECORDS)
    assert set(split_records("all")) == set(RECORDS) - set(PACED)
    assert split_records("all+paced") == RECORDS
    with pytest.raises(ConfigError, match="unknown split 'DS3'"):
        split_records("DS3")


def test_every_record_is_in_the_data_dir(data_dir):
    for r in RECORDS:
        assert (data_dir / f"{r}.hea").is_file(), r


def test_de_chazal_beat_counts(data_dir):
    """Per-class beat counts of DS1 and DS2 (de Chazal et al. 2004, Table I)."""
    from ecgkit.io import read_record
    from ecgkit.registry import create
    from ecgkit.segment import labelled_peaks

    detector = create("segmenters", "reference")
    expected = {"DS1": {"N": 45866, "S": 944, "V": 3788, "F": 415, "Q": 8},
                "DS2": {"N": 44259, "S": 1837, "V": 3221, "F": 388, "Q": 7}}
    for split, records in (("DS1", DS1), ("DS2", DS2)):
        counts = np.zeros(len(AAMI_CLASSES), dtype=np.int64)
        for r in records:
            peaks, labels = labelled_peaks(read_record(data_dir / r), detector)
            assert peaks.shape == labels.shape
            # peaks of beats outside the AAMI classes (e.g. "?") keep -1; the others are 0..4
            counts += np.bincount(labels[labels >= 0], minlength=len(AAMI_CLASSES))
        assert dict(zip(AAMI_CLASSES, counts.tolist())) == expected[split]


# --- patient-wise folds ----------------------------------------------------------------------

def test_patient_kfold_partitions_the_records():
    folds = patient_kfold(k=5, seed=0)
    assert len(folds) == 5
    everything = set(split_records("all"))
    tests = [set(test) for _, test in folds]
    assert set().union(*tests) == everything
    assert sum(len(t) for t in tests) == len(everything)  # disjoint
    for train, test in folds:
        assert set(train) | set(test) == everything
        assert not set(train) & set(test)
        assert list(train) == sorted(train) and list(test) == sorted(test)
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 2


@pytest.mark.parametrize("seed", range(6))
def test_records_201_and_202_stay_together(seed):
    for train, test in patient_kfold(k=4, seed=seed):
        assert ("201" in test) == ("202" in test)
        assert ("201" in train) == ("202" in train)


def test_patient_kfold_is_deterministic_with_seed():
    assert patient_kfold(k=5, seed=7) == patient_kfold(k=5, seed=7)
    assert patient_kfold(k=5, seed=7) != patient_kfold(k=5, seed=8)


def test_patient_kfold_on_a_subset():
    folds = patient_kfold(["100", "201", "202", "203"], k=3, seed=1)
    assert sorted(r for _, t in folds for r in t) == ["100", "201", "202", "203"]
    folds = patient_kfold(["100", "202", "203"], k=3, seed=1)  # 202 without 201 is its own group
    assert sorted(r for _, t in folds for r in t) == ["100", "202", "203"]


# --- data directory lookup -------------------------------------------------------------------

@pytest.fixture
def dirs(tmp_path, monkeypatch):
    opt, env, cache = tmp_path / "opt", tmp_path / "env", tmp_path / "xdg"
    opt.mkdir()
    env.mkdir()
    (cache / "ecgkit" / "mitdb").mkdir(parents=True)
    (cache / "ecgkit" / "mitdb" / "100.hea").write_text("100 1 360 10\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("ECGKIT_DATA", raising=False)
    return opt, env, cache / "ecgkit" / "mitdb"


def test_data_option_beats_env_beats_cache(dirs, monkeypatch):
    opt, env, cache = dirs
    monkeypatch.setenv("ECGKIT_DATA", str(env))
    assert resolve_data_dir(opt) == opt
    assert resolve_data_dir(str(opt)) == opt
    assert resolve_data_dir(None) == env
    monkeypatch.delenv("ECGKIT_DATA")
    assert resolve_data_dir(None) == cache


def test_empty_env_var_falls_through_to_cache(dirs, monkeypatch):
    monkeypatch.setenv("ECGKIT_DATA", "")
    assert resolve_data_dir() == dirs[2]


def test_cache_dir_defaults_to_home_cache(monkeypatch, tmp_path):
    from ecgkit.datasets.download import cache_dir

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir("mitdb") == tmp_path / ".cache" / "ecgkit" / "mitdb"


def test_missing_option_or_env_dir_is_a_data_error(dirs, monkeypatch, tmp_path):
    with pytest.raises(DataError, match="--data"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("ECGKIT_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"\$ECGKIT_DATA"):
        resolve_data_dir()


def test_nothing_found_is_a_clear_data_error(monkeypatch, tmp_path):
    monkeypatch.delenv("ECGKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError) as exc:
        resolve_data_dir()
    msg = str(exc.value)
    assert "--data" in msg and "ECGKIT_DATA" in msg and "ecgkit download mitdb" in msg
    assert str(tmp_path / "empty-cache" / "ecgkit" / "mitdb") in msg
    # a cache folder without any header is not data either
    (tmp_path / "empty-cache" / "ecgkit" / "mitdb").mkdir(parents=True)
    with pytest.raises(DataError):
        resolve_data_dir()
    assert resolve_data_dir(must_exist=False) == tmp_path / "empty-cache" / "ecgkit" / "mitdb"


# --- record resolution -----------------------------------------------------------------------

def test_resolve_records(data_dir, mitdb_record):
    assert resolve_records(["100", "101"], data_dir) == [str(data_dir / "100"), str(data_dir / "101")]
    assert resolve_records(["DS1"], data_dir) == [str(data_dir / r) for r in DS1]
    assert len(resolve_records(None, data_dir)) == 44
    elsewhere = mitdb_record("100")
    assert resolve_records([f"{elsewhere}.hea"], data_dir) == [str(elsewhere)]


def test_iter_records_checks_headers_up_front(data_dir):
    with pytest.raises(RecordError, match="999"):
        iter_records(["100", "999"], data_dir)
    with pytest.raises(RecordError, match="'V9'"):
        iter_records(["100"], data_dir, lead="V9")
    stream = iter_records(["100"], data_dir, lead="V5")
    assert len(stream) == 1
    (rec,) = list(stream)
    assert rec.name == "100" and rec.lead == "V5"


def test_resolve_records_takes_a_single_string_as_one_item(data_dir):
    from ecgkit.datasets import resolve_records

    assert resolve_records("DS1", data_dir) == resolve_records(["DS1"], data_dir)
    assert len(resolve_records("DS1", data_dir)) == 22  # not the characters 'D', 'S', '1'
    assert resolve_records("100", data_dir) == [str(data_dir / "100")]
