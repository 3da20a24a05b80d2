"""Files named in the docs, the examples and the code's docstrings and comments exist in
the project. test_docs.py checks markdown links; this checks the names written in prose
and code spans, which nothing else catches when a file moves or never existed.

What counts as a reference:

- a path under one of the project's directories (`docs/howto-udp.md`, `examples/`,
  `bench/run.py`, `src/snirelay/routing.py`, `scripts/...`, `tests/...`), possibly with
  leading `../` or a glob (`bench/results/2026*.json`: it must match something). A
  `.rs` path is realm's source (`src/conf/legacy/mod.rs`) and is not checked: the
  project has no Rust;
- a word ending in `.md` (`howto-stop.md`, `design.md`): some page of the project has
  that file name;
- a word ending in `.py` elsewhere (`net/loop.py`, `findings.py`): the tail of a
  project module's path, or a standard-library module (`ssl.py`);
- anything under `shared/` (the sibling docs the project was written from): a reader
  of the project does not have them, so such a reference is always wrong.

Where it looks: every markdown page of the project (README.md, docs/**/*.md,
BENCHMARKS.md, bench/*.md, packaging/README.md; whole pages, code blocks included),
every file in examples/, and the docstrings and comments (not the other strings) of
src/**/*.py and bench/**/*.py. A path in a page resolves against the repository root or
the page's directory; any other path against the root.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DIRS = ("docs", "examples", "bench", "src", "scripts", "tests")

# A path-like word, not the tail of a longer path (`foo/docs/x` is not ours, and neither
# is a URL's path); trailing punctuation is trimmed after.
WORD = re.compile(r"(?<![\w./:-])(?:\.\./)*[\w*-][\w./*-]*")
UNDER_DIRS = re.compile(r"(?:\.\./)*(?:" + "|".join(DIRS) + r")/")
SHARED = re.compile(r"(?:\.\./)*shared/")
SKIP_DIRS = {".git", ".venv", "__pycache__", "build", "node_modules"}


def _project_files(pattern: str) -> list[str]:
    """The project's files matching `pattern`, as paths from the root."""
    found = []
    for p in ROOT.rglob(pattern):
        rel = p.relative_to(ROOT).parts
        if not any(part in SKIP_DIRS or part.startswith(".") for part in rel[:-1]):
            found.append("/".join(rel))
    return found


MD_NAMES = {path.rsplit("/", 1)[-1] for path in _project_files("*.md")}
PY_PATHS = ["/" + path for path in _project_files("*.py")]


def _module_exists(ref: str) -> bool:
    """`net/loop.py`, `findings.py`: the tail of a project module's path, or a module of
    the standard library (`ssl.py`)."""
    if "/" not in ref and ref.removesuffix(".py") in sys.stdlib_module_names:
        return True
    return any(path.endswith("/" + ref) for path in PY_PATHS)


def _exists(ref: str, bases: tuple[Path, ...]) -> bool:
    for base in bases:
        if any(c in ref for c in "*?["):
            if any(base.glob(ref)):
                return True
        elif (base / ref).exists():
            return True
    return False


def _names_nothing(ref: str, bases: tuple[Path, ...]) -> bool:
    if UNDER_DIRS.match(ref):
        return not ref.endswith(".rs") and not _exists(ref, bases)
    if ref.endswith(".md"):
        return ref.rsplit("/", 1)[-1] not in MD_NAMES
    if ref.endswith(".py"):
        return not _exists(ref, bases) and not _module_exists(ref)
    return False


def dangling(text: str, bases: tuple[Path, ...]) -> list[str]:
    """The references in `text` that name nothing in the project."""
    bad = []
    for m in WORD.finditer(text):
        ref = m.group(0).rstrip(".,;:")
        if SHARED.match(ref):
            bad.append(f"{ref} (outside the project)")
        elif _names_nothing(ref, bases):
            bad.append(ref)
    return bad


def py_prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each docstring and comment of a Python file."""
    src = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                yield body[0].lineno, body[0].value.value


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "BENCHMARKS.md",
        ROOT / "packaging" / "README.md",
        *(ROOT / "bench").glob("*.md"),
        *(ROOT / "docs").rglob("*.md"),
    ]
)
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_file())
SOURCES = sorted(
    p
    for top in ("src", "bench")
    for p in (ROOT / top).rglob("*.py")
    if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_pages_name_files_that_exist(page: Path) -> None:
    bad = dangling(page.read_text(), (ROOT, page.parent))
    assert not bad, f"{_rel(page)}: no such file in the project: {bad}"


@pytest.mark.parametrize("example", EXAMPLES, ids=_rel)
def test_examples_name_files_that_exist(example: Path) -> None:
    bad = dangling(example.read_text(), (ROOT,))
    assert not bad, f"{_rel(example)}: no such file in the project: {bad}"


@pytest.mark.parametrize("source", SOURCES, ids=_rel)
def test_docstrings_and_comments_name_files_that_exist(source: Path) -> None:
    bad = [
        f"line {line}: {ref}" for line, text in py_prose(source) for ref in dangling(text, (ROOT,))
    ]
    assert not bad, f"{_rel(source)}: no such file in the project: {bad}"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("see `docs/howto-udp.md`", []),
        ("see docs/howto-nothing.md.", ["docs/howto-nothing.md"]),
        ("the how-to (`../docs/howto-udp.md`)", []),
        ("results in bench/results/*.json", []),
        ("results in bench/results/*.nothing", ["bench/results/*.nothing"]),
        ("the matrix of docs/design.md §1", ["docs/design.md"]),
        ("as ../shared/docs/style.md says", ["../shared/docs/style.md (outside the project)"]),
        ("design.md section 3", ["design.md"]),
        ("[stop](howto-stop.md)", []),
        ("foo/docs/x and mydocs/x", []),
        ("https://example.com/docs/x.md", []),
        ("packaging/NOTHING.md", ["packaging/NOTHING.md"]),
        ("`net/loop.py`, findings.py and `ssl.py`", []),
        ("`net/nothing.py`", ["net/nothing.py"]),
    ],
)
def test_dangling_finds_what_it_should(text: str, found: list[str]) -> None:
    assert sorted(dangling(text, (ROOT, ROOT / "docs"))) == sorted(found)
