"""The documentation site: it builds in strict mode and documents everything it must.

The site is built once per module with the environment's own mkdocs (``.venv/bin/mkdocs``
under ``make test``) into a temporary directory, so ``site/`` is never written. The
tests are skipped when mkdocs is not installed (``pip install -e ".[docs]"``).

Coverage checks (a datasette habit: an undocumented hook fails the suite):

* every built-in subcommand of ``ecgkit.cli.cli`` appears in the generated CLI reference;
* every hook of ``ecgkit.hookspecs`` has a section in the plugin guide, with a runnable
  example, and those examples run;
* every configuration key of ``ecgkit.config`` is in the configuration reference, with
  its real default.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MAX_IMAGE_BYTES = 150_000


def _mkdocs() -> Path | None:
    for candidate in (Path(sys.executable).parent / "mkdocs", REPO / ".venv" / "bin" / "mkdocs"):
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site (``mkdocs build --strict``); the build's output is in the failure message."""
    exe = _mkdocs()
    if exe is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([str(exe), "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                           "--site-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def page_text(site: Path, page: str) -> str:
    """Visible text of a built page: tags removed, entities decoded, whitespace collapsed."""
    raw = (site / page / "index.html").read_text(encoding="utf-8")
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def code_blocks(markdown: str, lang: str = "python") -> list[str]:
    """Fenced code blocks of one language (the fence's first word), in order."""
    return [m.group(1) for m in re.finditer(rf"^```{lang}\b[^\n]*\n(.*?)^```", markdown, re.M | re.S)]


def hook_names() -> list[str]:
    from ecgkit import hookspecs

    return [name for name, f in vars(hookspecs).items() if callable(f) and hasattr(f, "ecgkit_spec")]


def builtin_commands():
    """Commands defined by ecgkit itself (plugins may have added more to the group)."""
    from ecgkit.cli import cli

    return {name: cmd for name, cmd in cli.commands.items() if cmd.callback.__module__ == "ecgkit.cli"}


# --- the build -------------------------------------------------------------------------------

def test_site_builds_in_strict_mode(site):
    for page in ("", "getting-started", "concepts", "tutorial", "cli", "configuration", "plugins", "results",
                 "data", "api"):
        assert (site / page / "index.html").is_file(), page


def test_results_page_includes_every_benchmark_fragment(site):
    text = page_text(site, "results")
    assert "--8<--" not in text
    for name in ("qrs", "inter_patient", "speed", "faithfulness"):
        fragment = (DOCS / "results" / f"{name}.md").read_text(encoding="utf-8").strip()
        assert fragment, f"docs/results/{name}.md is empty"
        first_line = re.sub(r"[`_*|]", "", fragment.splitlines()[0]).split()
        assert " ".join(first_line[:6]) in re.sub(r"[`_*|]", "", text), f"docs/results/{name}.md not included"


def test_api_reference_renders_each_module(site):
    for page, module in (("registry", "ecgkit.registry"), ("hookspecs", "ecgkit.hookspecs"), ("io", "ecgkit.io"),
                         ("preprocess", "ecgkit.preprocess"), ("segment", "ecgkit.segment"),
                         ("metrics", "ecgkit.metrics"), ("config", "ecgkit.config"),
                         ("mitdb", "ecgkit.datasets.mitdb")):
        raw = (site / "api" / page / "index.html").read_text(encoding="utf-8")
        assert f'id="{module}.' in raw, f"{module}: no documented members"


def test_no_text_is_hidden_as_an_html_tag(site):
    """A placeholder such as ``<out>`` outside code would render as an invisible tag."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    for page in site.rglob("index.html"):
        raw = page.read_text(encoding="utf-8")
        if "<article" not in raw:
            continue
        body = raw[raw.index("<article"):raw.index("</article>")]
        unknown = {m.group(1) for m in re.finditer(r"<([A-Za-z_][\w.-]*)>", body)} - hooks._HTML_TAGS
        assert not unknown, f"{page.relative_to(site)}: {sorted(unknown)} would be hidden by the browser"


def test_images_are_small():
    for png in (DOCS / "img").glob("*.png"):
        assert png.stat().st_size < MAX_IMAGE_BYTES, f"{png.name} is {png.stat().st_size} bytes"


# --- the command-line reference --------------------------------------------------------------

def test_cli_reference_covers_every_subcommand(site):
    raw = (site / "cli" / "index.html").read_text(encoding="utf-8")
    text = page_text(site, "cli")
    commands = builtin_commands()
    assert {"annotate", "evaluate", "plugins", "run", "train"} <= set(commands)
    for name, cmd in commands.items():
        assert f'id="ecgkit-{name}"' in raw, f"`ecgkit {name}` has no section in the CLI reference"
        first_line = " ".join(cmd.help.strip().splitlines()[0].split())
        assert first_line in text, f"`ecgkit {name}`: help text missing or mangled: {first_line!r}"
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in text, f"`ecgkit {name}`: option {opt} missing"


# --- the plugin guide ------------------------------------------------------------------------

def guide_sections() -> dict[str, str]:
    """Markdown of the plugin guide split at its headings: heading text -> body."""
    md = (DOCS / "plugins.md").read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,4} .+)$", md, flags=re.M)
    return {re.sub(r"[#`]", "", parts[i]).strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_hook_has_a_section_in_the_plugin_guide(site):
    raw = (site / "plugins" / "index.html").read_text(encoding="utf-8")
    sections = guide_sections()
    hooks = hook_names()
    assert len(hooks) >= 6
    for hook in hooks:
        assert hook in sections, f"hook {hook} has no section in docs/plugins.md"
        assert f'id="{hook}"' in raw, f"hook {hook}: section not rendered"
        runnable = [b for b in code_blocks(sections[hook]) if 'if __name__ == "__main__":' in b]
        assert runnable, f"hook {hook}: its section has no runnable example"
        assert any(re.search(rf"@ecgkit\.hookimpl\s*\ndef {hook}\(", b) for b in runnable), \
            f"hook {hook}: the example does not implement it"


def test_plugin_guide_examples_run(tmp_path):
    """Every runnable example of the guide, as a script (``__name__ == "__main__"``), in one interpreter."""
    md = (DOCS / "plugins.md").read_text(encoding="utf-8")
    scripts = []
    for i, block in enumerate(b for b in code_blocks(md) if 'if __name__ == "__main__":' in b):
        path = tmp_path / f"example_{i}.py"
        path.write_text(block, encoding="utf-8")
        scripts.append(str(path))
    assert len(scripts) >= len(hook_names())
    runner = ("import runpy, sys\n"
              "for path in sys.argv[1:]:\n"
              "    print('---', path, flush=True)\n"
              "    runpy.run_path(path, run_name='__main__')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", runner, *scripts], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the configuration reference -------------------------------------------------------------

def config_defaults(cls=None, prefix: str = "") -> dict[str, object]:
    """Dotted key -> default value of every leaf field of RunConfig (nested dataclasses recursed)."""
    from ecgkit.config import RunConfig

    cls = cls or RunConfig
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            out[key] = dataclasses.asdict(default)
            out.update(config_defaults(type(default), key + "."))
        else:
            out[key] = default
    return out


def test_configuration_reference_documents_every_key_and_its_default():
    import yaml

    md = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = {}
    for m in re.finditer(r"^\| `([\w.]+)` \| [^|]* \| ([^|]*) \|", md, re.M):
        rows[m.group(1)] = m.group(2).strip()
    for key, default in config_defaults().items():
        assert key in rows, f"config key {key!r} is missing from docs/configuration.md"
        cell = rows[key]
        if isinstance(default, dict) and default and cell.startswith("see "):
            continue  # a section documented by its own table
        m = re.fullmatch(r"`(.*)`", cell)
        assert m, f"config key {key!r}: default cell {cell!r} is not `value`"
        assert yaml.safe_load(m.group(1)) == default, f"config key {key!r}: documented {cell}, actual {default!r}"
