"""MIT-BIH Arrhythmia Database: records, the AAMI EC57 classes and the standard splits.

Moody & Mark, "The impact of the MIT-BIH Arrhythmia Database", IEEE EMB 20(3), 2001.
Inter-patient split: de Chazal, O'Dwyer & Reilly, IEEE TBME 51(7):1196-1206, 2004
(DS1 for training, DS2 for testing; the paced records are excluded from both).
"""

from __future__ import annotations

import numpy as np

#: The 48 records of the database.
RECORDS = (
    "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "111", "112", "113",
    "114", "115", "116", "117", "118", "119", "121", "122", "123", "124", "200", "201", "202",
    "203", "205", "207", "208", "209", "210", "212", "213", "214", "215", "217", "219", "220",
    "221", "222", "223", "228", "230", "231", "232", "233", "234",
)
#: Records with paced beats, excluded by the AAMI recommendation.
PACED = ("102", "104", "107", "217")
#: de Chazal 2004 training set.
DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124", "201",
       "203", "205", "207", "208", "209", "215", "220", "223", "230")
#: de Chazal 2004 test set.
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212", "213",
       "214", "219", "221", "222", "228", "231", "232", "233", "234")

#: AAMI EC57 heartbeat classes, in the order used for class indices.
AAMI_CLASSES = ("N", "S", "V", "F", "Q")
#: MIT-BIH beat symbol -> AAMI class (de Chazal 2004 mapping).
AAMI_MAP = {
    **dict.fromkeys("NLRej", "N"),
    **dict.fromkeys("AaJS", "S"),
    **dict.fromkeys("VE", "V"),
    "F": "F",
    **dict.fromkeys("/fQ", "Q"),
}
#: All MIT-BIH beat annotation symbols (beats that count for QRS detection).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")

SPLITS = {"DS1": DS1, "DS2": DS2, "all": tuple(r for r in RECORDS if r not in PACED),
          "all+paced": RECORDS}


def aami_class(symbol: str) -> str | None:
    """AAMI class of a MIT-BIH beat symbol, or None for a non-beat annotation."""
    return AAMI_MAP.get(symbol)


def split_records(name: str) -> tuple[str, ...]:
    """Records of a named split (``DS1``, ``DS2``, ``all``, ``all+paced``)."""
    from ..errors import ConfigError

    try:
        return SPLITS[name]
    except KeyError:
        raise ConfigError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}") from None


def reference_beats(samples, symbols):
    """Keep the AAMI-classed beats of an annotation list: ``(samples, class_indices)``."""
    keep = [i for i, s in enumerate(symbols) if s in AAMI_MAP]
    cls = np.array([AAMI_CLASSES.index(AAMI_MAP[symbols[i]]) for i in keep], dtype=np.int64)
    return np.asarray(samples, dtype=np.int64)[keep], cls


def patient_kfold(records=None, k: int = 5, seed: int = 0) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Patient-wise k-fold over records: ``[(train_records, test_records), ...]``.

    Each record is one patient (records 201 and 202 come from the same patient and are
    kept in the same fold). Folds are shuffled with ``seed``.
    """
    records = list(records if records is not None else SPLITS["all"])
    groups: list[list[str]] = []
    for r in records:
        if r == "202" and "201" in records:
            continue
        groups.append(["201", "202"] if r == "201" and "202" in records else [r])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    folds = [[] for _ in range(k)]
    for j, gi in enumerate(order):
        folds[j % k].extend(groups[gi])
    out = []
    for i in range(k):
        test = tuple(sorted(folds[i]))
        train = tuple(sorted(r for j, f in enumerate(folds) if j != i for r in f))
        out.append((train, test))
    return out
