"""The ``ecgkit`` command line: one thin subcommand per stage.

Each command parses options, then calls the stage module named after it. Errors of
the :class:`~ecgkit.errors.EcgkitError` family become one line on stderr and exit 1.
Plugins add commands through the ``register_commands(cli)`` hook.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import EcgkitError


class MultiValue(click.Option):
    """An option taking several values after one flag: ``--records 100 101 102``.

    Also accepts repeated flags and comma-separated lists.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            orig = opt.process

            def process(value, state, orig=orig):
                orig(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    orig(state.rargs.pop(0), state)

            opt.process = process

    def type_cast_value(self, ctx, value):
        values = super().type_cast_value(ctx, value)
        return tuple(v for item in values for v in str(item).split(",") if v)


class EcgkitGroup(click.Group):
    """Turns EcgkitError into a one-line error; loads plugin commands on first use."""

    _plugins_loaded = False

    def _load_plugin_commands(self):
        if not self._plugins_loaded:
            type(self)._plugins_loaded = True
            try:
                from .plugins import get_plugin_manager

                builtin = dict(self.commands)
                get_plugin_manager().hook.register_commands(cli=self)
                for name, cmd in builtin.items():
                    if self.commands.get(name) is not cmd:
                        self.commands[name] = cmd
                        raise EcgkitError(f"a plugin tried to replace the built-in command {name!r}; "
                                          f"plugins may only add new commands")
            except EcgkitError as exc:
                raise click.ClickException(str(exc)) from None

    def list_commands(self, ctx):
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._load_plugin_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EcgkitError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None


def data_option(f):
    return click.option("--data", "data", type=click.Path(file_okay=False), default=None,
                        help="Data directory (default: $ECGKIT_DATA, else the user cache).")(f)


def records_option(f):
    return click.option("--records", cls=MultiValue, default=None,
                        help="Record names in the data directory, record paths, or a split "
                             "(DS1, DS2, all). Space- or comma-separated.")(f)


def lead_option(f):
    return click.option("--lead", default=None, help="Lead name (default MLII, else the first channel).")(f)


@click.group(cls=EcgkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ecgkit")
def cli():
    """ecgkit: heartbeat classification from ECG records.

    Stages: preprocess -> segment -> train -> quantize -> evaluate -> explain;
    `ecgkit run CONFIG.yaml` runs them all, `ecgkit annotate` labels whole records.
    """


@cli.command()
@data_option
@records_option
@lead_option
@click.option("--step", "steps", multiple=True,
              help="Preprocessor, optionally with params: 'bandpass', 'resample:fs_hz=180'. "
                   "Repeatable; default: bandpass then zscore.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
def preprocess(data, records, lead, steps, out):
    """Filter and normalise records; write <out>/<record>.npz (signal, fs)."""
    from .preprocess import DEFAULT_CHAIN, build_chain, parse_step
    from .datasets import iter_records
    from .preprocess import preprocess_records

    chain = build_chain([parse_step(s) for s in steps] or list(DEFAULT_CHAIN))
    paths = preprocess_records(iter_records(records, data, lead), chain, Path(out))
    click.echo(f"wrote {len(paths)} preprocessed record(s) to {out}")


@cli.command()
@data_option
@records_option
@lead_option
@click.option("--segmenter", default="pan-tompkins", show_default=True, help="Registered segmenter name.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--ext", default="qrs", show_default=True, help="Annotation file extension.")
@click.option("--windows", is_flag=True, help="Also write beat windows + RR features + labels (beats.npz).")
@click.option("--fs", "fs_hz", type=float, default=360.0, show_default=True,
              help="Sampling rate of the windows (with --windows).")
@click.option("--before", "before_s", type=float, default=0.25, show_default=True,
              help="Window start before the R peak, seconds (with --windows).")
@click.option("--after", "after_s", type=float, default=0.45, show_default=True,
              help="Window end after the R peak, seconds (with --windows).")
def segment(data, records, lead, segmenter, out, ext, windows, fs_hz, before_s, after_s):
    """Detect beats; write <out>/<record>.<ext> WFDB annotations (each beat 'N')."""
    from .datasets import iter_records
    from .segment import segment_records

    summary = segment_records(iter_records(records, data, lead), segmenter, Path(out), ext,
                              windows=windows, fs_hz=fs_hz, before_s=before_s, after_s=after_s)
    click.echo(summary)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="YAML run config (see examples/mitdb_inter_patient.yaml).")
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@data_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (overrides the config).")
def train(config_path, resume, data, out):
    """Train an encoder on beats of the training records (see the config reference).

    Model selection uses the validation patients held out of the training records
    (config key data.val), never the test split. Writes best.pt, last.pt,
    metrics.json and training_curve.png to the run directory.
    """
    from .config import load_config
    from .train import train as run_training

    cfg = load_config(config_path)
    best = run_training(cfg, run_dir=out, resume=resume, data_dir=data,
                        log=lambda m: click.echo(m, err=True))
    click.echo(f"best checkpoint: {best}")


@cli.command()
@click.option("--model", default="transnet", show_default=True, help="Registered model name or checkpoint file.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output file of the int8 model.")
@data_option
@click.option("--calib-records", cls=MultiValue, default=("DS1",), show_default=True,
              help="Records whose beats calibrate the activation ranges (never the test split).")
@click.option("--calib-beats", type=int, default=2048, show_default=True, help="Beats used for calibration.")
@click.option("--onnx", "onnx_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the fp32 ONNX graph here.")
def quantize(model, out, data, calib_records, calib_beats, onnx_out):
    """Post-training int8 quantization of a model, calibrated on training beats."""
    from .quantize import export_onnx
    from .quantize import quantize as run_quantize

    path = run_quantize(model, out, data=data, calib_records=list(calib_records), calib_beats=calib_beats)
    click.echo(f"int8 model: {path} ({Path(path).stat().st_size / 1024:.0f} KB)")
    if onnx_out:
        click.echo(f"fp32 ONNX: {export_onnx(model, onnx_out)}")


@cli.command()
@click.option("--model", default="transnet", show_default=True, help="Registered model name or checkpoint file.")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True)
def export(model, fmt, out):
    """Export a model to another runtime's format (fp32 ONNX)."""
    from .quantize import export_onnx

    click.echo(f"wrote {export_onnx(model, out)}")


@cli.command()
@click.option("--model", default="transnet", show_default=True,
              help="Registered model name or checkpoint file.")
@data_option
@click.option("--split", default="DS2", show_default=True, help="Split name (DS1, DS2, all).")
@records_option
@click.option("--segmenter", default="reference", show_default=True,
              help="reference = the record's own beats (literature protocol); a detector = end to end.")
@click.option("--protocol", type=click.Choice(["split", "kfold"]), default="split", show_default=True,
              help="kfold: patient-wise k-fold training + evaluation over all non-paced records "
                   "(or over --split / --records when given, e.g. --split DS1 for model selection).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Training config for --protocol kfold.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Number of folds for --protocol kfold.")
@click.option("--fold-seed", type=int, default=None,
              help="Seed that assigns patients to folds for --protocol kfold (default: the config's seed). "
                   "Fix it to compare training seeds or recipes on the same folds.")
@click.option("--resume", is_flag=True,
              help="--protocol kfold: continue an interrupted run in --out (each fold from its last.pt).")
@lead_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write report.json, report.md and confusion_matrix.png here.")
def evaluate(model, data, split, records, segmenter, protocol, config_path, folds, fold_seed, resume, lead, out):
    """AAMI EC57 evaluation: per-class Se, +P, FPR, F1, accuracy, kappa, jk, per-record table."""
    from .evaluate import evaluate as run_eval
    from .evaluate import markdown

    if protocol == "kfold":
        from .config import load_config
        from .evaluate import kfold

        if not config_path:
            raise click.UsageError("--protocol kfold needs --config (the training recipe for each fold)")
        from .datasets.mitdb import SPLITS

        names = None  # default: all non-paced records
        if records:
            names = [n for r in records for n in SPLITS.get(r, [r])]
        elif click.get_current_context().get_parameter_source("split") != click.core.ParameterSource.DEFAULT:
            if split not in SPLITS:
                raise click.UsageError(f"--protocol kfold: unknown split {split!r} (choose from {', '.join(SPLITS)})")
            names = SPLITS[split]
        report = kfold(load_config(config_path), folds, data, out, records=names, fold_seed=fold_seed, resume=resume)
    else:
        if resume:
            raise click.UsageError("--resume applies to --protocol kfold only")
        report = run_eval(model, list(records) if records else [split], data, segmenter, lead, out)
    click.echo(markdown(report))


@cli.command()
@click.option("--model", default="transnet", show_default=True, help="Registered model name or checkpoint file.")
@click.option("--record", default=None, help="WFDB record path (or name in the data directory).")
@click.option("--beat", type=int, default=None, help="Beat index in the record (0-based).")
@click.option("--sample-id", default=None, help="Beat as RECORD_beat_N, e.g. 100_beat_5.")
@click.option("--method", default="gradcam", show_default=True, help="Registered explainer name.")
@click.option("--class", "cls", default=None, help="With --n: class-average saliency of beats of this class.")
@click.option("--n", "n_beats", type=click.IntRange(min=1), default=200, show_default=True, help="Beats for --class.")
@click.option("--target", default=None,
              help="Explain this class (N, S, V, F, Q) instead of the predicted one.")
@click.option("--no-context", is_flag=True, help="With --class: skip the rhythm-context decomposition (faster).")
@click.option("--segmenter", default="reference", show_default=True,
              help="Beat positions: reference (.atr) or a detector such as pan-tompkins.")
@data_option
@lead_option
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
def explain(model, record, beat, sample_id, method, cls, n_beats, target, no_context, segmenter, data, lead, out):
    """Why was a beat called V or S? Attribution heatmap PNG + per-sample attributions (.npy)."""
    from . import explain as ex

    if cls:
        files = ex.class_average(model, cls, n_beats, method, out, data=data, records=record, lead=lead,
                                 context=not no_context)
    else:
        if sample_id:
            record, beat = ex.parse_sample_id(sample_id)
        if record is None or beat is None:
            raise click.UsageError("give --record and --beat, or --sample-id, or --class")
        files = ex.explain_beat(model, record, beat, method, out, data=data, segmenter=segmenter, lead=lead,
                                target=target)
    for f in files:
        click.echo(f"wrote {f}")


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output checkpoint file.")
def combine(models, out):
    """Average trained MODELS (registered names or checkpoint files) into one model.

    Writes a small checkpoint that names its members instead of copying their weights. Members
    may read different channels (a one-lead and a two-lead model); the combined model reads them
    all. Their per-beat log-probabilities are averaged, each member's own ensemble counting once.
    """
    from .checkpoint import read_checkpoint
    from .ensemble import save_combined

    path = save_combined(out, list(models))
    spec = read_checkpoint(path)["input_spec"]  # the members were loaded once, by save_combined
    click.echo(f"wrote {path}: ensemble of {', '.join(models)}, reads {', '.join(spec['channels'])}")


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", default="transnet", show_default=True, help="Registered model name or checkpoint file.")
@click.option("--segmenter", default="pan-tompkins", show_default=True, help="Registered segmenter name.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--ext", default="ecgkit", show_default=True, help="Annotation file extension.")
@lead_option
def annotate(paths, model, segmenter, out, ext, lead):
    """Label every beat of whole records; write <out>/<record>.<ext> (symbols N S V F Q).

    PATHS are WFDB record paths without extension, from any database and sampling rate.
    """
    from .annotate import annotate as run_annotate

    for row in run_annotate(list(paths), model, segmenter, out, ext, lead):
        counts = " ".join(f"{c} {row[c]}" for c in "NSVFQ" if c in row)
        click.echo(f"{row['record']}: {row['beats']} beats ({counts}) -> {row['file']}")


@cli.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--quick", is_flag=True, help="Apply the config's quick: profile (a few records, one epoch).")
@data_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (overrides run_dir).")
def run(config_path, quick, data, out):
    """Run the whole pipeline described by a YAML config into one run directory."""
    from .config import load_config
    from .pipeline import run_pipeline

    cfg = load_config(config_path, quick=quick)
    if out:
        cfg.run_dir = out
    report = run_pipeline(cfg, data=data, log=lambda m: click.echo(m, err=True))
    click.echo(f"report: {report}")


def _model_description(path: str) -> str:
    """What a shipped checkpoint is and reads, from the input contract stored with its weights."""
    from .checkpoint import read_checkpoint
    from .inference import uses_second_lead

    try:
        ck = read_checkpoint(path)
    except EcgkitError as exc:
        return f"{Path(path).name}: unreadable ({exc})"
    spec = ck.get("input_spec", {})
    members = len(ck.get("member_seeds") or [])
    leads = "2 leads" if uses_second_lead(spec) else "1 lead"
    what = (f"ensemble of {', '.join(map(str, ck['combined']))}" if ck.get("combined") else
            f"{ck.get('encoder', '?')}{f' of {members}' if members > 1 else ''}")
    return (f"{Path(path).name}: {what}, reads "
            f"{leads} ({', '.join(spec.get('channels', ()))}) at {spec.get('fs_hz')} Hz, "
            f"classes {''.join(spec.get('classes', ()))}")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_cmd(as_json):
    """List every registered component by kind, with the plugin that provided it."""
    from .registry import collect

    kinds = ("preprocessors", "segmenters", "encoders", "explainers")
    data = {k: [{"name": c.name, "plugin": c.plugin, "description": c.description}
                for c in collect(k).values()] for k in kinds}
    data["models"] = [{"name": c.name, "plugin": c.plugin, "description": _model_description(c.factory)}
                      for c in collect("models").values()]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ecgkit components")
    for col in ("kind", "name", "plugin", "description"):
        table.add_column(col)
    for kind, items in data.items():
        for item in items:
            table.add_row(kind, item["name"], item["plugin"], item["description"])
    Console().print(table)


@cli.command()
@click.argument("database", type=click.Choice(["mitdb"]))
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Target directory (default: the user cache).")
def download(database, dest):
    """Download a database from PhysioNet (through wfdb) and verify its checksums."""
    from .datasets.download import download_database
    from .progress import progress_bar

    with progress_bar() as bar:
        task = bar.add_task(f"downloading {database}", total=None)

        def progress(done, total, name):
            bar.update(task, completed=done, total=total, description=f"{database} {name}")

        path = download_database(database, dest, progress=progress)
    click.echo(f"{database} is in {path} (checksums verified)")


def main():  # console-script entry point
    cli(prog_name="ecgkit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
