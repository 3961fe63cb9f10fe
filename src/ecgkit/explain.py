"""Explanations: attribution heatmaps over the ECG (see issue: explanations)."""

from __future__ import annotations

from . import hookimpl
from .errors import EcgkitError


@hookimpl
def register_explainers():
    return {}


def parse_sample_id(sample_id: str):
    raise EcgkitError("`ecgkit explain` is not yet available in this version")


def explain_beat(model_ref, record, beat, method, out_dir, data=None, segmenter="reference", lead=None):
    raise EcgkitError("`ecgkit explain` is not yet available in this version")


def class_average(model_ref, cls, n, method, out_dir, data=None, records=None, lead=None):
    raise EcgkitError("`ecgkit explain` is not yet available in this version")


def explain_examples(model_ref, out_dir, data=None):
    raise EcgkitError("`ecgkit explain` is not yet available in this version")
