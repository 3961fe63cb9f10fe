"""The ``ecgkit`` command line: commands, plugins listing, segment output, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb
from click.testing import CliRunner

from ecgkit.cli import cli

STAGES = {"preprocess", "segment", "train", "quantize", "evaluate", "explain", "annotate", "run", "plugins",
          "download"}


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def invoke(runner, data_dir):
    def run(*args):
        return runner.invoke(cli, [str(a) for a in args], env={"ECGKIT_DATA": str(data_dir)})

    return run


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, AssertionError)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("Error: ")
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    assert result.stdout == ""


def no_output(out: Path):
    return not out.exists() or not any(out.iterdir())


# --- help and listing ----------------------------------------------------------------------

def test_help_lists_the_stages(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = set()
    in_commands = False
    for line in result.stdout.splitlines():
        if line.startswith("Commands:"):
            in_commands = True
        elif in_commands and line.startswith("  ") and line.strip():
            listed.add(line.split()[0])
    assert STAGES <= listed, STAGES - listed
    assert runner.invoke(cli, ["-h"]).stdout == result.stdout


def test_version(runner):
    import ecgkit

    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and ecgkit.__version__ in result.stdout


def test_plugins_json(runner):
    result = runner.invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"preprocessors", "segmenters", "encoders", "explainers", "models"}
    for kind, items in data.items():
        assert isinstance(items, list)
        for item in items:
            assert set(item) == {"name", "plugin", "description"}
            assert all(isinstance(v, str) for v in item.values())
        names = [i["name"] for i in items]
        assert names == sorted(names) and len(set(names)) == len(names)
    by_name = {i["name"]: i for i in data["segmenters"]}
    for name in ("pan-tompkins", "xqrs", "reference"):
        assert by_name[name]["plugin"] == "ecgkit"
        assert by_name[name]["description"]
    assert {i["name"] for i in data["preprocessors"] if i["plugin"] == "ecgkit"} == {"bandpass", "zscore", "resample"}


def test_plugins_lists_shipped_models_with_what_they_read(runner, tmp_path):
    """A registered checkpoint is described from its stored input contract (here a tiny one-lead
    and a tiny two-lead transnet registered by a plugin of the test's own)."""
    import ecgkit
    from ecgkit.checkpoint import save_checkpoint
    from ecgkit.plugins import get_plugin_manager
    from ecgkit.registry import create

    small = {"d_model": 32, "n_layers": 1, "block_channels": [16, 16]}
    two = {**small, "channels": ["beat", "beat_minus_record_median", "lead2", "lead2_minus_record_median"]}
    paths = {}
    for name, params in (("tiny-1", small), ("tiny-2", two)):
        paths[name] = str(save_checkpoint(tmp_path / f"{name}.pt", create("encoders", "transnet", **params).eval(),
                                          encoder="transnet", params=params))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    paths["broken"] = str(tmp_path / "broken.pt")

    class Shipper:
        @ecgkit.hookimpl
        def register_models(self):
            return paths

    pm = get_plugin_manager()
    pm.register(Shipper(), name="test-shipper")
    try:
        result = runner.invoke(cli, ["plugins", "--json"])
    finally:
        pm.unregister(name="test-shipper")
    assert result.exit_code == 0, result.output
    models = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert models["tiny-1"]["plugin"] == "test-shipper"
    assert "tiny-1.pt: transnet, reads 1 lead (beat, beat_minus_record_median) at 180.0 Hz, classes NSVFQ" \
        == models["tiny-1"]["description"]
    assert "reads 2 leads (beat, beat_minus_record_median, lead2, lead2_minus_record_median)" \
        in models["tiny-2"]["description"]
    assert models["broken"]["description"].startswith("broken.pt: unreadable (")


def test_combine_writes_a_model_that_names_its_members(runner, tmp_path):
    """ecgkit combine: a one-lead and a two-lead model into one; bad members are one-line errors, no file."""
    from ecgkit.checkpoint import read_checkpoint, save_checkpoint
    from ecgkit.registry import create

    small = {"d_model": 32, "n_layers": 1, "block_channels": [16, 16]}
    two = {**small, "channels": ["beat", "beat_minus_record_median", "lead2", "lead2_minus_record_median"]}
    for name, params in (("a", small), ("b", two)):
        save_checkpoint(tmp_path / f"{name}.pt", create("encoders", "transnet", **params).eval(),
                        encoder="transnet", params=params)
    out = tmp_path / "mix.pt"
    result = runner.invoke(cli, ["combine", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "reads beat, beat_minus_record_median, lead2, lead2_minus_record_median" in result.stdout
    ck = read_checkpoint(out)
    assert ck["combined"] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")] and ck["state_dict"] == {}
    from ecgkit.cli import _model_description   # what `ecgkit plugins` says of such a file

    assert _model_description(str(out)) == (f"mix.pt: ensemble of {tmp_path / 'a.pt'}, {tmp_path / 'b.pt'}, reads 2 leads "
                                            "(beat, beat_minus_record_median, lead2, lead2_minus_record_median) "
                                            "at 180.0 Hz, classes NSVFQ")
    bad = tmp_path / "bad.pt"
    for args, frag in (([str(tmp_path / "a.pt")], "at least two"),
                       ([str(tmp_path / "a.pt"), str(tmp_path / "nope.pt")], "not found")):
        r = runner.invoke(cli, ["combine", *args, "--out", str(bad)])
        assert_one_line_error(r, frag)
        assert not bad.exists()


def test_plugins_table(runner):
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0
    for word in ("segmenters", "xqrs", "reference", "bandpass", "ecgkit"):
        assert word in result.stdout


# --- segment -------------------------------------------------------------------------------

def test_segment_reference_writes_qrs_files(invoke, tmp_path, data_dir, beat_samples):
    out = tmp_path / "out"
    result = invoke("segment", "--records", "100", "101", "--segmenter", "reference", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["100.qrs", "101.qrs"]
    for name in ("100", "101"):
        ann = wfdb.rdann(str(out / name), "qrs")
        np.testing.assert_array_equal(ann.sample, beat_samples(data_dir / name))
        assert set(ann.symbol) == {"N"}
    assert "beats in 2 record(s)" in result.stdout


def test_segment_records_separated_by_commas_or_repeated(invoke, tmp_path, data_dir):
    out = tmp_path / "out"
    result = invoke("segment", "--records", "100,103", "--records", "105", "--segmenter", "reference",
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["100.qrs", "103.qrs", "105.qrs"]


def test_segment_with_data_option_and_windows(runner, tmp_path, data_dir, mitdb_record):
    src = mitdb_record("100", dest=tmp_path / "db")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["segment", "--data", str(src.parent), "--records", "100", "--segmenter",
                                 "reference", "--ext", "ref", "--windows", "--fs", "128", "--out", str(out)],
                           env={"ECGKIT_DATA": str(tmp_path / "nowhere")})
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["100.ref", "beats.npz"]
    from ecgkit.segment import BeatSet

    bs = BeatSet.load(out / "beats.npz")
    assert len(bs) == 2273 and bs.windows.shape == (2273, 1, 32 + 58)
    assert bs.meta["fs_hz"] == 128.0


def test_preprocess_writes_npz(invoke, tmp_path):
    out = tmp_path / "out"
    result = invoke("preprocess", "--records", "100", "--step", "bandpass", "--step", "resample:fs_hz=180",
                    "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(out / "100.npz") as z:
        assert float(z["fs"]) == 180.0 and z["signal"].shape == (325000,)


# --- errors: one line on stderr, no traceback, no output -----------------------------------

def test_unknown_record(invoke, tmp_path):
    out = tmp_path / "out"
    result = invoke("segment", "--records", "100", "999", "--segmenter", "reference", "--out", out)
    assert_one_line_error(result, "999", "not found")
    assert no_output(out)


def test_unknown_segmenter(invoke, tmp_path):
    out = tmp_path / "out"
    result = invoke("segment", "--records", "100", "--segmenter", "no-such", "--out", out)
    assert_one_line_error(result, "'no-such'", "reference", "xqrs", "pan-tompkins")
    assert no_output(out)


def test_unreadable_header(invoke, tmp_path):
    (tmp_path / "bad.hea").write_text("garbage that is no header\n")
    out = tmp_path / "out"
    result = invoke("segment", "--records", tmp_path / "bad", "--segmenter", "reference", "--out", out)
    assert_one_line_error(result, "bad.hea", "unreadable header")
    assert no_output(out)


def test_unknown_lead(invoke, tmp_path):
    out = tmp_path / "out"
    result = invoke("segment", "--records", "100", "--lead", "V2", "--segmenter", "reference", "--out", out)
    assert_one_line_error(result, "'V2'", "MLII, V5")
    assert no_output(out)


def test_unknown_preprocessor(invoke, tmp_path):
    out = tmp_path / "out"
    result = invoke("preprocess", "--records", "100", "--step", "notch", "--out", out)
    assert_one_line_error(result, "'notch'")
    assert no_output(out)


def test_nothing_to_read_without_data(runner, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["segment", "--records", "100", "--segmenter", "reference", "--out", str(out)],
                           env={"ECGKIT_DATA": None, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert_one_line_error(result, "ECGKIT_DATA", "ecgkit download mitdb")
    assert no_output(out)


@pytest.fixture
def truncated(mitdb_record):
    rec = mitdb_record("100")
    with open(f"{rec}.dat", "r+b") as f:
        f.truncate(4096)
    return rec


def test_truncated_signal_file_exits_non_zero_without_output(invoke, tmp_path, truncated):
    out = tmp_path / "out"
    result = invoke("segment", "--records", truncated, "--segmenter", "reference", "--out", out)
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    assert "truncated" in result.stderr
    assert no_output(out)


def test_truncated_signal_file_is_a_one_line_error(invoke, tmp_path, truncated):
    out = tmp_path / "out"
    result = invoke("segment", "--records", truncated, "--segmenter", "reference", "--out", out)
    assert_one_line_error(result, "100.dat", "truncated")


def test_truncated_signal_file_after_a_good_record_leaves_no_output(invoke, tmp_path, truncated):
    out = tmp_path / "out"
    result = invoke("segment", "--records", "101", truncated, "--segmenter", "reference", "--out", out)
    assert result.exit_code == 1
    assert no_output(out), os.listdir(out)


# --- the installed console script ----------------------------------------------------------

@pytest.fixture(scope="module")
def console_script():
    exe = Path(sys.executable).with_name("ecgkit")
    found = str(exe) if exe.is_file() else shutil.which("ecgkit")
    if not found:
        pytest.skip("the ecgkit console script is not installed next to this Python")
    return found


def test_console_script(console_script, data_dir, tmp_path, beat_samples):
    env = {**os.environ, "ECGKIT_DATA": str(data_dir)}
    out = tmp_path / "out"
    ok = subprocess.run([console_script, "segment", "--records", "100", "--segmenter", "reference",
                         "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "beats in 1 record(s)" in ok.stdout
    np.testing.assert_array_equal(wfdb.rdann(str(out / "100"), "qrs").sample, beat_samples(data_dir / "100"))

    bad = subprocess.run([console_script, "segment", "--records", "999", "--segmenter", "reference",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.splitlines() == [bad.stderr.strip()] and bad.stderr.startswith("Error: ")
    assert "999" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
