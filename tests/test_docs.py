"""The documentation is true (README.md's own checks are in tests/test_readme.py).

- Every code block of docs/*.md runs as the README's do: Python blocks, and commands on the demo's
  files, run as written in a folder where `beam-gradients --demo` ran (a `# -> a, b` line after such
  a command is checked against the columns it wrote); every other `beam-gradients` command is
  checked against its command's `--help` (each flag exists, each choice is offered).
  YAML blocks name only options. Blocks of output, trees and JSON are shown, not run.
- Every flag that `--help` of the three commands lists is documented, and the docs (README.md and
  docs/*.md) name no flag that none of them accepts (Beam's pipeline options count: the commands take
  them; a few flags of other programs the docs show are listed below, each with its program).
- Relative links point at files and headings that exist; "how it works" names the registries' answers
  and the files of this tree.
- The modules' doctests pass, module by module.
- docs/report.png and its sister pictures are the pages the demo makes today (see docs/make_screenshots.py).
"""

from __future__ import annotations

import argparse
import ast
import base64
import doctest
import functools
import hashlib
import importlib
import importlib.util
import io
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
EVERY_PAGE = [ROOT / "README.md", *PAGES]
EXECUTABLES = pathlib.Path(sys.executable).parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
COMMANDS = {"run": [], "influence": ["influence"], "report": ["report"]}
# Flags of other programs that the docs show in their own command lines.
OTHER_PROGRAMS = {
    "--host": "dask scheduler --host",
    "--port": "dask scheduler --port",
    "--nthreads": "dask worker --nthreads",
    "--rows": "bench/text_layer.py --rows (a benchmark script, not a command)",
    "--worker_pool": "the worker image's entry point: docker run IMAGE --worker_pool",
    "--ouput": "troubleshooting's example of a misspelt option and the error it gets",
}
GENERATED = {"options.md"}  # written by docs/make_options.py; linked before it exists


# ---- reading the pages --------------------------------------------------------------------------------------------

def code_blocks(text: str) -> list[tuple[str, str]]:
    """Each fenced block of a page, in order: (its language, empty where none is named; its text)."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


def commands(text: str) -> list[list[str]]:
    """The `beam-gradients` command lines of a block, continuations joined, split as a shell would."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.startswith("beam-gradients ")]


def links(text: str) -> list[str]:
    """The targets of a page's Markdown links and images that are not URLs."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t and not t.startswith("mailto:")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def command_of(argv: list[str]) -> str:
    return argv[1] if len(argv) > 1 and argv[1] in COMMANDS else "run"


# ---- what the commands accept -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    """`--help` of each command, as a user gets it."""
    def help_of(argv):
        done = subprocess.run([sys.executable, "-m", "pipeline", *argv, "--help"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    texts = {name: help_of(argv) for name, argv in COMMANDS.items()}
    if "--input" not in texts["run"]:  # a top-level help that lists the subcommands only: the job's is `run --help`
        texts["run"] += help_of(["run"])
    return texts


def listed_flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_]*)", help_text)) - {"--help"}


def offered_choices(help_text: str) -> dict[str, set[str]]:
    return {flag: set(choices.split(",")) for flag, choices in re.findall(r"(--[a-z_]+) \{([^}]*)\}", help_text)}


@functools.cache
def beam_options() -> frozenset[str]:
    """Every option of Beam's PipelineOptions subclasses (the runners' included): the commands accept them."""
    from apache_beam.options.pipeline_options import PipelineOptions

    try:  # Beam's Dask options, with the dask extra installed
        importlib.import_module("apache_beam.runners.dask.dask_runner")
    except ImportError:
        pass
    parser = argparse.ArgumentParser(conflict_handler="resolve")
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        cls._add_argparse_args(parser)
    return frozenset(s for action in parser._actions for s in action.option_strings if s.startswith("--"))


# ---- the code blocks ----------------------------------------------------------------------------------------------

def _runs_on_the_demo(argv: list[str]) -> bool:
    return "..." not in argv and any(a.lstrip("'").startswith("demo/") or "=demo/" in a for a in argv[1:])


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder where `beam-gradients --demo` ran, as the pages' examples assume."""
    folder = tmp_path_factory.mktemp("docs")
    done = subprocess.run([str(EXECUTABLES / "beam-gradients"), "--demo", "--quiet"], cwd=folder, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_each_pages_code_runs_as_written(page, demo_folder, help_texts):
    ran = 0
    for lang, text in code_blocks(page.read_text()):
        if lang == "python":
            done = subprocess.run([sys.executable, "-c", text], cwd=demo_folder, env=ENV, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"{page.name}:\n{text}\n{done.stderr[-3000:]}"
            ran += 1
        elif lang == "yaml":
            options = yaml.safe_load(text)
            known = listed_flags(help_texts["run"]) | beam_options()
            assert {f"--{key}" for key in options} <= known, (page.name, set(options))
        last = None  # the command that ran last in this block
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            if line.startswith("beam-gradients "):
                argv = shlex.split(line, comments=True)
                _check_against_help(argv, help_texts, page.name)
                last = None
                if _runs_on_the_demo(argv):
                    done = subprocess.run([str(EXECUTABLES / argv[0]), *argv[1:]], cwd=demo_folder, env=ENV,
                                          capture_output=True, text=True, timeout=600)
                    assert done.returncode == 0, f"{page.name}: {shlex.join(argv)}\n{done.stderr[-3000:]}"
                    ran, last = ran + 1, argv
            elif line.startswith("# -> ") and last is not None:  # the columns the command just run writes
                said = [c.strip() for c in re.sub(r"\s*\([^)]*\)", "", line[5:]).split(",")]
                output = last[last.index("--output") + 1]
                shard = sorted(demo_folder.glob(f"{output}-00000-of-*.parquet"))
                assert shard and pq.read_schema(shard[0]).names == said, (page.name, line, shard)
    if page.name in ("api.md", "influence.md", "methods.md", "outputs.md", "report.md", "weights.md"):  # run on the demo
        assert ran >= 1, page.name


def _check_against_help(argv: list[str], help_texts: dict[str, str], page: str) -> None:
    command = command_of(argv)
    text = help_texts[command]
    known = listed_flags(text) | (beam_options() if command != "report" else set())
    choices = offered_choices(text)
    words = [w for w in argv[1:] if w != "..."]
    for n, word in enumerate(words):
        if not word.startswith("--"):
            continue
        flag, _, value = word.partition("=")
        assert flag in known, f"{page}: {shlex.join(argv)}: {flag} is not an option of `{command}`"
        if flag in choices:
            value = value or words[n + 1]
            assert value in choices[flag], f"{page}: {flag} {value} is not one of {sorted(choices[flag])}"


def test_every_command_of_the_readme_is_an_accepted_command_line(help_texts):
    for lang, text in code_blocks((ROOT / "README.md").read_text()):
        for argv in commands(text):
            _check_against_help(argv, help_texts, "README.md")


# ---- flags --------------------------------------------------------------------------------------------------------

def _named_flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_]*)", text))


def test_every_flag_of_the_three_commands_is_documented(help_texts):
    named = set().union(*(_named_flags(page.read_text()) for page in EVERY_PAGE))
    for command, text in help_texts.items():
        missing = listed_flags(text) - named
        assert not missing, f"`{command} --help` lists {sorted(missing)}, which no page of the docs names"
    # the other two commands are in the main command's help
    assert re.search(r"\binfluence\b", help_texts["run"]) and re.search(r"\breport\b", help_texts["run"])


def test_the_docs_name_no_flag_that_does_not_exist(help_texts):
    accepted = set().union(*(listed_flags(t) for t in help_texts.values())) | beam_options() | {"--help"}
    for page in EVERY_PAGE:
        unknown = _named_flags(page.read_text()) - accepted - set(OTHER_PROGRAMS)
        assert not unknown, f"{page.name} names {sorted(unknown)}, which no command accepts"


# ---- links and structure ------------------------------------------------------------------------------------------

def _anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", [*EVERY_PAGE, ROOT / "bench/README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_at_files_and_headings_that_exist(page):
    for target in links(page.read_text()):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if file.name in GENERATED and file.parent == DOCS and not file.exists():
            continue
        assert file.exists(), f"{page.name} links {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name} links {target}: no such heading in {file.name}"


def test_how_it_works_names_every_registered_answer_and_only_files_that_exist():
    from transforms.gradients.methods import IG_RULES, METHODS
    from transforms.gradients.methods.baselines import BASELINES
    from transforms.gradients.targets import TARGETS
    from transforms.gradients.wrt import FORMS, WRT
    from transforms.influence.scores import SCORES

    text = (DOCS / "how-it-works.md").read_text()
    rows = dict(re.findall(r"^\| [^|]+ \| `(\w+)` \| (.+) \|$", text, re.M))
    for registry, names in (("TARGETS", TARGETS), ("METHODS", METHODS), ("WRT", WRT), ("FORMS", FORMS)):
        assert re.findall(r"`(\w+)`", rows[registry]) == list(names), registry
    for names in (BASELINES, IG_RULES, SCORES):
        assert all(f"`{name}`" in text for name in names), list(names)
    tree = code_blocks(text)[0][1]
    folder = []  # the folders above each line, by indentation
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent >= 8:  # a description's continuation line
            continue
        name, depth = line.split()[0], indent // 2
        folder = folder[:depth]
        path = ROOT.joinpath(*folder, name)
        assert path.exists(), f"how-it-works.md names {'/'.join([*folder, name])}, which does not exist"
        if name.endswith("/"):
            folder.append(name.rstrip("/"))
    mentioned = re.findall(r"\b([a-z_]+\.py)\b", tree)
    for name in mentioned:
        assert list(ROOT.glob(f"**/{name}")), f"how-it-works.md names {name}, which does not exist"


def _dag_defaults(name: str) -> dict:
    """A DAG file's DEFAULTS, read without importing Airflow."""
    tree = ast.parse((ROOT / "dags" / name).read_text())
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEFAULTS")


def test_the_airflow_pages_name_the_dags_settings():
    text = (DOCS / "scale.md").read_text()
    table = text[text.index("| setting | default |"):].split("\n\n")[0]
    in_table = {name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert in_table == set(_dag_defaults("gradients_dag.py"))
    influence = text[text.index("`dags/influence_dag.py`"):].split("\n\n")[0]
    assert set(re.findall(r"`(\w+)`", influence)) - {"beam_gradients_influence", "complete", "_SUCCESS"} == set(
        _dag_defaults("influence_dag.py"))


# ---- doctests -----------------------------------------------------------------------------------------------------

MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for package in ("transforms", "pipeline")
    for path in (ROOT / package).rglob("*.py")
    if path.name != "__main__.py"
)


def _has_examples(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
    return ">>>" in source


@pytest.mark.parametrize("module", [m for m in MODULES if _has_examples(m)])
def test_module_doctests_pass(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes, writes here
    imported = importlib.import_module(module)
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(imported) if t.examples]
    assert tests, f"{module} holds >>> but no doctest was found"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {module} failed (see above)"


def test_the_engine_doctest_runs():
    assert "transforms.gradients.engine" in [m for m in MODULES if _has_examples(m)]


# ---- the screenshot -----------------------------------------------------------------------------------------------

def _screenshots():
    spec = importlib.util.spec_from_file_location("make_screenshots", DOCS / "make_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_report_pngs_are_the_pages_the_demo_makes_today(tmp_path):
    """Each page kind, built now from the demo, has the fingerprint recorded when its picture was taken; and each
    picture is the one taken then. Else: run `python docs/make_screenshots.py`."""
    screenshots = _screenshots()
    recorded = screenshots.recorded()
    # A demo of its own, as the script runs it: the shared demo folder's pages are rewritten by the docs' examples.
    pages = screenshots.make_pages(str(tmp_path))
    assert [k.name for k in screenshots.KINDS] == ["main", "influence", "self-influence"]
    for kind in screenshots.KINDS:
        page = pathlib.Path(pages[kind.name]).read_text()
        assert screenshots.page_fingerprint(page) == recorded[("page", kind.name)], (
            f"the demo's {kind.name} report page changed since {kind.picture.name} was taken: "
            "run `python docs/make_screenshots.py`")
        assert hashlib.sha256(kind.picture.read_bytes()).hexdigest() == recorded[("png", kind.name)]
    main = pathlib.Path(pages["main"]).read_text()
    fingerprint = recorded[("page", "main")]
    # The fingerprint sees what a reader would: a section more, or a caption changed, changes it.
    assert screenshots.page_fingerprint(main.replace("Rejected rows", "Rejected rowz")) != fingerprint
    assert screenshots.page_fingerprint(main.replace("</section>", "</section><section></section>", 1)) != fingerprint
    # ...and not what differs between two runs of the same code.
    rerun = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "1999-01-01T00:00:00Z", main)
    assert screenshots.page_fingerprint(rerun) == fingerprint
    # The influence pages show the demo's point: the planted mislabeled rows' inputs beside their neighbours.
    assert 'data-chart="influence-inputs"' in pathlib.Path(pages["influence"]).read_text()
    assert 'data-chart="self-influence-inputs"' in pathlib.Path(pages["self-influence"]).read_text()
    for name, path in pages.items():  # every image of every page kind decodes; Chromium shows each without a word
        text = pathlib.Path(path).read_text()
        sources = re.findall(r'<img [^>]*src="([^"]+)"', text)
        assert len(sources) >= 2, name
        for source in sources:
            assert source.startswith("data:image/png;base64,"), (name, source[:40])
            picture = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
            picture.load()
            assert min(picture.size) > 10, name
        browser = screenshots.chromium()
        if browser is None:
            continue
        done = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                               "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", f"file://{path}"],
                              capture_output=True, text=True, timeout=120)
        noise = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Content Security Policy" in line
                 or "Failed to load" in line or "net::ERR" in line]
        assert done.returncode == 0 and not noise, (name, noise)
        assert done.stdout.count("<img") == len(sources), name


def test_no_file_holds_a_merge_conflicts_markers():
    """A merge's conflict markers left in a page or a module (once they reached bench/README.md and docs/report.md)."""
    markers = ("<" * 7 + " ", ">" * 7 + " ")
    listed = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.cfg", "*.toml", "*.yaml", "*.txt", "*.sh"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    found = []
    for path in listed:
        with open(ROOT / path, encoding="utf-8", errors="replace") as fh:
            found += [f"{path}:{n}" for n, line in enumerate(fh, 1) if line.startswith(markers)]
    assert listed and not found, found
