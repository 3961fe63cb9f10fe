"""Hook specifications: the contract between ecgkit and its plugins.

A plugin is a module (or object) with functions marked ``@ecgkit.hookimpl`` and
named after the hooks below. It is found through the ``ecgkit`` entry-point group
of an installed distribution, e.g. in the plugin's ``pyproject.toml``::

    [project.entry-points.ecgkit]
    my_plugin = "my_package.plugin"

ecgkit's own built-in components are registered through these very hooks, so the
plugin path runs on every call.

Each ``register_*`` hook returns a dict ``{name: factory}``. A factory may carry a
docstring; its first line is the description shown by ``ecgkit plugins``. Two
plugins registering the same name in the same kind is an error naming both.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ecgkit")


@hookspec
def register_preprocessors():
    """Return ``{name: factory}`` of signal preprocessors.

    Contract: ``factory(**params)`` returns a callable
    ``apply(signal, fs) -> (signal, fs)`` where ``signal`` is a 1-D float array
    (mV, or z-scores after normalisation) and ``fs`` its sampling rate in Hz. A
    preprocessor may change the sampling rate (``resample``) and must return the
    new one.
    """


@hookspec
def register_segmenters():
    """Return ``{name: factory}`` of beat detectors (segmenters).

    Contract (third parties depend on it; it will not change):
    ``factory(**params)`` returns a callable ``detect(signal, fs) -> np.ndarray``
    of int R-peak sample indices, sorted ascending, where ``signal`` is a 1-D
    float array in mV and ``fs`` its sampling rate in Hz.

    A segmenter that needs more than the signal (``reference`` reads the record's
    own annotations) may accept a keyword-only ``record`` argument:
    ``detect(signal, fs, *, record=None)``; ecgkit passes the
    :class:`ecgkit.io.Record` when the callable's signature accepts it.
    """


@hookspec
def register_encoders():
    """Return ``{name: factory}`` of beat-classification models (encoders).

    Contract: ``factory(**params)`` returns a :class:`torch.nn.Module` whose
    ``forward(windows, rr, pad_mask=None)`` maps beat windows
    ``(batch, beats, channels, samples)`` and RR features ``(batch, beats, 4)``
    in seconds (pre-RR, post-RR, local mean RR, record mean RR) to logits
    ``(batch, beats, n_classes)``. The module exposes its input contract as
    ``module.input_spec``, a dict with the keys ``fs_hz``, ``before_samples``,
    ``after_samples``, ``channels`` (from ``"beat"`` and
    ``"beat_minus_record_median"``, the channels ecgkit builds) and ``classes``, and
    optionally ``seq_len`` (beats per sequence at inference, default 64),
    ``local_rr_beats`` (default 10), ``bandpass_hz`` (default ``[0.5, 35]``) and
    ``record_rr_stat`` (``"mean"``, the default, ``"median"`` or ``"atrial"``: how the record-level RR
    column is taken from the record's intervals), ``local_rr_stat`` (``"mean"``, the default, or
    ``"atrial"``: the local mean counted in sinus cycles), ``interval_rr_stat`` (``"raw"``, the default,
    or ``"atrial"``: pre- and post-RR in sinus cycles; not with ``cut_next_s``), ``blocked_p_min_run`` (with an
    ``"atrial"`` stat, the run of consecutive intervals a blocked P wave is counted in) and ``cut_next_s`` (the encoder ignores
    each window from this many seconds before the next beat's R on; training then makes
    the stored windows agree with the intervals its augmentations rewrite).
    ``ecgkit train`` passes ``seq_len`` to the factory, so it must accept it, and adds
    ``ventricular_neighbours`` (core's record-level step, from ``model.ventricular_neighbours``) to
    the contract it saves; an encoder does not set it.

    A name may also resolve to a shipped checkpoint: see ``register_models``.
    """


@hookspec
def register_models():
    """Return ``{name: path}`` of shipped, trained checkpoints.

    ``ecgkit annotate --model NAME`` resolves NAME through this hook before
    treating it as a file path.
    """


@hookspec
def register_explainers():
    """Return ``{name: factory}`` of attribution methods.

    Contract: ``factory(model, **params)`` returns a callable
    ``explain(windows, rr, beat_index, target) -> np.ndarray`` of per-sample
    attributions with the shape of ``windows[0, beat_index]``
    (``(channels, samples)``), for the class index ``target``.
    """


@hookspec
def register_commands(cli):
    """Add click commands to the ``ecgkit`` command group.

    ``cli`` is the :class:`click.Group`; call ``cli.command()`` or
    ``cli.add_command(...)`` on it. Called once, when the CLI is built.
    """
