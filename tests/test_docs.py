"""The documentation builds and every example in it works.

- ``mkdocs build --strict`` must succeed: a broken link, a missing snippet or a missing
  API object fails the run.
- Every ```python block of ``docs/*.md`` and ``README.md`` runs, page by page in order
  in one namespace, in a temporary folder, on the tiny model and offline. A block that
  cannot run here (a napari window, a GPU, a real dataset) is marked by a line
  ``<!-- no-test: why -->`` right above it; those are counted so that they stay few.
  A page may define what its examples need without showing it, in a hidden block
  ``<!-- test-setup`` ... ``-->`` (Python, run where it stands in the page).
- ``napari-corrseg`` command lines in ```bash blocks must parse with the real CLI parser,
  and repository paths named in them (``scripts/...``, ``benchmarks/...``) must exist.
- The command lines of ``docs/cli.md`` run as written, in page order, from an empty
  folder, offline (so ``--model auto`` is the tiny model); only those that open a napari
  window (``--gui``) are skipped, and the demo's screenshot of napari (tested on its own in
  ``test_cli_demo_picture.py``) is not drawn.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
NO_TEST = re.compile(r"^<!--\s*no-test\b.*-->$")
SETUP_OPEN, COMMENT_CLOSE = "<!-- test-setup", "-->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
PYTHON_LANGS = {"python", "py"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
#: The most blocks the docs may exclude from testing, over all pages together.
MAX_UNTESTED_BLOCKS = 6
#: The two commands README.md must show exactly: CI and users run them.
README_COMMANDS = ("bash scripts/run-demo.sh", "bash scripts/run-tests.sh")


@dataclass
class CodeBlock:
    """One fenced code block of a Markdown page."""

    page: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    no_test: str | None  # the marker comment, or None when the block must run
    hidden: bool = False  # a <!-- test-setup --> block: run, but not shown on the site

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[CodeBlock]:
    """Fenced blocks of ``page`` in order, dedented when nested (e.g. in an admonition)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == SETUP_OPEN:
            end = index + 1
            while end < len(lines) and lines[end].strip() != COMMENT_CLOSE:
                end += 1
            code = "\n".join(lines[index + 1 : end]) + "\n"
            blocks.append(CodeBlock(page, index + 2, "python", code, None, hidden=True))
            index = end + 1
            continue
        opening = FENCE.match(lines[index])
        if not opening or not opening["info"].strip():
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        lang = opening["info"].strip().split()[0].lower().lstrip(".{")
        previous = next(
            (lines[k].strip() for k in range(index - 1, -1, -1) if lines[k].strip()), ""
        )
        body, end = [], index + 1
        while end < len(lines) and lines[end].strip() != fence:
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end])
            end += 1
        marker = previous if NO_TEST.match(previous) else None
        blocks.append(CodeBlock(page, index + 2, lang, "\n".join(body) + "\n", marker))
        index = end + 1
    return blocks


def _pages_with(langs: set[str]) -> list[Path]:
    """Pages holding at least one block in ``langs`` that is not marked no-test."""
    return [
        page
        for page in PAGES
        if page.exists() and any(b.lang in langs and not b.no_test for b in code_blocks(page))
    ]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- the site builds ---------------------------------------------------------------------


def test_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="install the 'docs' extra to build the site")
    pytest.importorskip("material", reason="install the 'docs' extra to build the site")
    pytest.importorskip("mkdocstrings", reason="install the 'docs' extra to build the site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir"]
    command += [str(tmp_path / "site"), "--config-file", str(ROOT / "mkdocs.yml")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
    problems = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        problems or done.stderr.splitlines()[-30:]
    )
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "index.html").is_file()


# -- the Python examples run ---------------------------------------------------------------


@pytest.fixture
def docs_environment(tmp_path, monkeypatch):
    """A temporary working folder, the tiny model, no network, a private cache."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("NAPARI_CORRSEG_MODEL", "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NAPARI_CORRSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the variable is read when huggingface_hub is imported, which may have happened already
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with(PYTHON_LANGS), ids=_page_id)
def test_python_examples_run(page, docs_environment):
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(code_blocks(page), start=1):
        if block.lang not in PYTHON_LANGS or block.no_test:
            continue
        # pad so that a traceback names the page's own line numbers
        source = "\n" * (block.line - 1) + block.code
        output = io.StringIO()
        try:
            with redirect_stdout(output):
                exec(compile(source, str(block.page), "exec"), namespace)
        except Exception:
            pytest.fail(
                f"python block {number} at {block.where} failed:\n{block.code}\n"
                f"--- its output ---\n{output.getvalue()}\n--- traceback ---\n"
                f"{traceback.format_exc(limit=-4)}\nFix the example, or mark it with "
                "'<!-- no-test: why -->' on the line above if it cannot run on the tiny "
                "model without a display.",
                pytrace=False,
            )


def test_untested_blocks_stay_few():
    untested = [
        b.where
        for page in PAGES
        if page.exists()
        for b in code_blocks(page)
        if b.lang in PYTHON_LANGS and b.no_test
    ]
    assert len(untested) <= MAX_UNTESTED_BLOCKS, (
        f"{len(untested)} python blocks are marked no-test (at most {MAX_UNTESTED_BLOCKS}): "
        + ", ".join(untested)
    )


def test_block_extraction_sees_markers_and_nesting(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- no-test: needs a window -->\n"
        "```python\nimport napari\n```\n\n!!! note\n    ```bash\n    napari-corrseg demo\n"
        "    ```\n\n<!-- test-setup\ny = 2\n-->\n",
        encoding="utf-8",
    )
    blocks = code_blocks(page)
    assert [(b.lang, b.line, b.no_test is None, b.hidden) for b in blocks] == [
        ("python", 4, True, False),
        ("python", 9, False, False),
        ("bash", 14, True, False),
        ("python", 18, True, True),
    ]
    assert blocks[2].code == "napari-corrseg demo\n"
    assert blocks[3].code == "y = 2\n"


# -- the shell examples are real ---------------------------------------------------------


def _shell_commands(block: CodeBlock) -> list[str]:
    """Logical command lines of a shell block: continuations joined, prompts dropped."""
    joined = block.code.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


#: Options whose command lines open a window, which the docs tests cannot close.
NEEDS_A_WINDOW = ("--gui",)


@pytest.mark.slow
def test_command_line_page_runs_as_written(docs_environment, monkeypatch):
    from napari_corrseg import cli
    from napari_corrseg.cli import demo
    from napari_corrseg.files.io import check_output_folder

    monkeypatch.delenv("NAPARI_CORRSEG_MODEL")  # as written: --model auto, offline
    monkeypatch.setattr(demo, "render_picture", lambda out, context: None)
    ran = []
    for block in code_blocks(DOCS / "cli.md"):
        if block.lang not in SHELL_LANGS or block.no_test:
            continue
        for command in _shell_commands(block):
            words = shlex.split(command, comments=True)
            if not words or Path(words[0]).name != "napari-corrseg" or _is_synopsis(command):
                continue
            if any(word in NEEDS_A_WINDOW for word in words):
                continue
            stderr = io.StringIO()
            with redirect_stderr(stderr), redirect_stdout(io.StringIO()):
                code = cli.main(words[1:])
            assert code == 0, f"{block.where}: {command!r} exited {code}: {stderr.getvalue()}"
            ran.append(words[1])
    assert {"sample-data", "demo", "match", "coseg", "transfer", "cache"} <= set(ran)
    for folder in ("matches", "parts", "moved", "corrseg-demo"):
        assert check_output_folder(folder).ok, folder
    assert Path("matches/pair_0_2/matches.csv").is_file()  # three images: two pairs


def _is_synopsis(command: str) -> bool:
    """A usage line such as ``match SOURCE TARGET [TARGET ...]``, not a real command."""
    return "[" in command or "|" in command or "..." in command


@pytest.mark.parametrize("page", _pages_with(SHELL_LANGS), ids=_page_id)
def test_shell_examples_use_real_commands(page):
    from napari_corrseg.cli import build_parser

    parser = build_parser()
    problems = []
    for block in code_blocks(page):
        if block.lang not in SHELL_LANGS or block.no_test:
            continue
        for command in _shell_commands(block):
            try:
                words = shlex.split(command, comments=True)
            except ValueError as error:
                problems.append(f"{block.where}: cannot split {command!r}: {error}")
                continue
            for word in words:
                if re.fullmatch(r"(scripts|benchmarks)/[\w./-]+\.(sh|py)", word):
                    if not (ROOT / word).is_file():
                        problems.append(f"{block.where}: {word} does not exist")
            if not words or Path(words[0]).name != "napari-corrseg" or _is_synopsis(command):
                continue
            stderr = io.StringIO()
            try:
                with redirect_stderr(stderr), redirect_stdout(io.StringIO()):
                    parser.parse_args(words[1:])
            except SystemExit as stop:
                if stop.code not in (0, None):
                    message = stderr.getvalue().strip().splitlines()[-1:]
                    problems.append(f"{block.where}: {command!r} does not parse: {message}")
    assert not problems, "\n".join(problems)


# -- the README ----------------------------------------------------------------------------


def test_readme_shows_the_two_commands_and_valid_links():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shell_lines = [
        command
        for block in code_blocks(ROOT / "README.md")
        if block.lang in SHELL_LANGS
        for command in _shell_commands(block)
    ]
    for command in README_COMMANDS:
        assert command in shell_lines, f"README.md must show `{command}` in a bash block"
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images, "README.md should show a screenshot"


# -- the benchmarks page -------------------------------------------------------------------


def test_benchmarks_page_includes_every_result_table():
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    # a table file is included whole ("file.md") or without its title line ("file.md:2:")
    snippets = re.findall(r'^--8<-- "([^":]+)(:2:)?"', text, flags=re.MULTILINE)
    included = {name for name, _ in snippets}
    for name, skip_title in snippets:
        if skip_title and (ROOT / name).is_file():
            first = (ROOT / name).read_text(encoding="utf-8").splitlines()[:1]
            assert first and first[0].startswith("# "), (
                f"docs/benchmarks.md drops line 1 of {name}, but it is not a title: {first}"
            )
    written = {
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    }
    assert written <= included, f"docs/benchmarks.md does not include {sorted(written - included)}"
    missing = sorted(name for name in included if not (ROOT / name).is_file())
    assert not missing, f"docs/benchmarks.md includes missing files {missing}"


# -- names in the prose are real -----------------------------------------------------------


def _resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and get the remaining attributes."""
    import importlib

    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


def test_named_objects_and_variables_exist():
    import napari_corrseg

    source = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "src").rglob("*.py"))
    problems = []
    for page in PAGES:
        if not page.exists():
            continue
        text = page.read_text(encoding="utf-8")
        for name in sorted(set(re.findall(r"\bnapari_corrseg(?:\.[A-Za-z_]\w*)+", text))):
            try:
                _resolve(name)
            except (ImportError, AttributeError) as error:
                problems.append(f"{_page_id(page)}: {name} does not exist ({error})")
        for name in sorted(set(re.findall(r"\bnc\.([A-Za-z_]\w*)", text))):
            if not hasattr(napari_corrseg, name):
                problems.append(f"{_page_id(page)}: nc.{name} is not in the public API")
        for variable in sorted(set(re.findall(r"\bNAPARI_CORRSEG_[A-Z_]+\b", text))):
            if variable not in source:
                problems.append(f"{_page_id(page)}: {variable} is read nowhere in src/")
    assert not problems, "\n".join(problems)


def test_resolve_finds_real_names_and_rejects_invented_ones():
    from napari_corrseg.core.maps import AttentionMaps

    assert _resolve("napari_corrseg.core.maps.AttentionMaps") is AttentionMaps
    with pytest.raises(AttributeError):
        _resolve("napari_corrseg.core.maps.NoSuchThing")
