"""Every citation of a design document resolves inside the repository (docs/architecture.md "Layout").

The code cites the design documents of `docs/` by section number (`img2img-semantics.md §3.2`, `semantics §7.4`, a
bare `§2.4 b` in a file that cites one numbered document) and by section name (`architecture.md "Ids"`,
`api.md "Submit", "Status"`). A maintainer with only this repository must be able to follow each one, so each must
name a file in `docs/` that has a heading for that number or name. A lettered citation such as `§2.4b` names item b
of section 2.4. Files that refer to documents outside the checkout (a `shared` folder beside it) fail too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

THIS_FILE = Path(__file__).resolve()
ROOT = THIS_FILE.parents[2]
DOCS_FOLDER = "docs"

SCANNED_SUFFIXES = frozenset({".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".Dockerfile"})
SCANNED_NAMES = frozenset({"Dockerfile", "Makefile"})
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "build", "dist", "demo-output"})

# Markdown files the code names that are not design documents.
NOT_DESIGN_DOCUMENTS = frozenset({"README.md", "RESULTS.md"})

# The short form the code uses for the img2img semantics document.
SEMANTICS_DOCUMENT = "img2img-semantics.md"

# `img2img-semantics.md`, `docs/api.md`, `[api.md](api.md)`, `` `api.md` ``, `api.md's`; not `bench/RESULTS.md`.
_DOC = r"(?<![\w./-])(?:docs/)?(?P<doc>[\w-]+\.md)(?!\w)(?:`|\]\([^)\s]*\))?(?:'s)?,?"
_SECTION = r"§ ?(?P<number>\d+(?:\.\d+)*[a-z]?)"
_NAMES = r'(?P<names>"[^"\n]+"(?:(?:,| and) "[^"\n]+")*)'
_NUMBERED = re.compile(rf"{_DOC}\s+{_SECTION}(?:\s+{_NAMES})?")
_SEMANTICS = re.compile(rf"(?<![\w-])semantics\s+{_SECTION}(?:\s+{_NAMES})?")
_NAMED = re.compile(rf"{_DOC}\s+{_NAMES}")
_MENTION = re.compile(_DOC)
_BARE_SECTION = re.compile(_SECTION)
_QUOTED = re.compile(r'"([^"\n]+)"')
_HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
_HEADING_NUMBER = re.compile(r"^(?P<number>\d+(?:\.\d+)*[a-z]?)\.?(?:\s|$)")
_LETTERED = re.compile(r"^(?P<number>\d+(?:\.\d+)*)(?P<letter>[a-z])$")
OUTSIDE_PATHS = ("../shared", "/work/shared")


@dataclass(frozen=True)
class Citation:
    """`doc` named at `path:line`, optionally with a section number or name."""

    path: str
    line: int
    doc: str
    number: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        section = f" §{self.number}" if self.number else f' "{self.name}"' if self.name else ""
        return f"{self.path}:{self.line}: {self.doc}{section}"


def scanned_files(root: Path) -> Iterator[Path]:
    """The tree's source, documentation, script, config and Docker files (hidden folders and build output skipped)."""
    for folder, subfolders, files in os.walk(root):
        # Pruned in place so that a virtual environment or .git is never walked.
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not (name.startswith(".") or name in SKIPPED_DIRS or name.endswith(".egg-info"))
        )
        for name in sorted(files):
            path = Path(folder) / name
            if path.resolve() == THIS_FILE:
                continue  # its examples are made-up citations, there to test the checker
            if path.suffix in SCANNED_SUFFIXES or name in SCANNED_NAMES:
                yield path


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _names(group: str | None) -> list[str]:
    return _QUOTED.findall(group) if group else []


def citations_in(text: str, path: str, own_doc: str | None = None) -> list[Citation]:
    """Every design-document citation in `text`; `own_doc` is the document `text` is, if it is one.

    A bare `§N` belongs to the one document the file cites by number (a design document that cites none by number
    is citing itself); with none or several it is reported with doc "?" (ambiguous).
    """
    found: list[Citation] = []
    numbered_docs: set[str] = set()
    claimed: set[int] = set()  # offsets of § signs already read as part of a longer form

    for pattern in (_NUMBERED, _SEMANTICS):
        for match in pattern.finditer(text):
            doc = match.groupdict().get("doc") or SEMANTICS_DOCUMENT
            line = _line_of(text, match.start())
            numbered_docs.add(doc)
            claimed.add(match.start("number"))
            found.append(Citation(path, line, doc, number=match["number"]))
            found.extend(Citation(path, line, doc, name=name) for name in _names(match["names"]))

    for match in _NAMED.finditer(text):
        line = _line_of(text, match.start())
        found.extend(Citation(path, line, match["doc"], name=name) for name in _names(match["names"]))

    for match in _MENTION.finditer(text):
        if match["doc"] not in NOT_DESIGN_DOCUMENTS:
            found.append(Citation(path, _line_of(text, match.start()), match["doc"]))

    owners = numbered_docs or ({own_doc} if own_doc else set())
    for match in _BARE_SECTION.finditer(text):
        if match.start("number") in claimed:
            continue
        doc = next(iter(owners)) if len(owners) == 1 else "?"
        found.append(Citation(path, _line_of(text, match.start()), doc, number=match["number"]))
    return found


@dataclass(frozen=True)
class Headings:
    """A document's section numbers and heading texts, and the lines under each numbered heading."""

    numbers: dict[str, list[str]]
    texts: list[str]

    def has_number(self, number: str) -> bool:
        if number in self.numbers:
            return True
        lettered = _LETTERED.match(number)
        if not lettered or lettered["number"] not in self.numbers:
            return False
        item = re.compile(rf"^\s*{lettered['letter']}[.)]\s")
        return any(item.match(line) for line in self.numbers[lettered["number"]])

    def has_name(self, name: str) -> bool:
        wanted = name.lower()
        return any(
            text == wanted or (text.startswith(wanted) and not text[len(wanted)].isalnum())
            for text in (t.lower() for t in self.texts)
        )


def headings_of(markdown: str) -> Headings:
    """The headings of a Markdown document, outside fenced code blocks."""
    numbers: dict[str, list[str]] = {}
    texts: list[str] = []
    current: list[str] | None = None
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading is None:
            if current is not None:
                current.append(line)
            continue
        text = heading["text"].strip()
        numbered = _HEADING_NUMBER.match(text)
        if numbered:
            current = numbers.setdefault(numbered["number"], [])
            text = text[numbered.end() :].strip()
        texts.append(text)
    return Headings(numbers, texts)


def unresolved(root: Path) -> tuple[list[Citation], list[str]]:
    """(every citation under `root`, the problems found: one line per citation that does not resolve)."""
    docs = root / DOCS_FOLDER
    headings = {path.name: headings_of(path.read_text(encoding="utf-8")) for path in docs.glob("*.md")}
    citations: list[Citation] = []
    for path in scanned_files(root):
        relative = path.relative_to(root)
        own_doc = path.name if relative.parent == Path(DOCS_FOLDER) and path.suffix == ".md" else None
        citations.extend(citations_in(path.read_text(encoding="utf-8"), str(relative), own_doc))

    problems: list[str] = []
    for citation in citations:
        if citation.doc == "?":
            problems.append(f"{citation}: a bare section number in a file that cites no (or several) documents")
        elif citation.doc not in headings:
            problems.append(f"{citation}: no such document in {DOCS_FOLDER}/")
        elif citation.number and not headings[citation.doc].has_number(citation.number):
            problems.append(f"{citation}: {citation.doc} has no section {citation.number}")
        elif citation.name and not headings[citation.doc].has_name(citation.name):
            problems.append(f'{citation}: {citation.doc} has no section "{citation.name}"')
    return citations, problems


# --------------------------------------------------------------------------------------------------------------
# The repository


def test_every_design_document_citation_resolves() -> None:
    citations, problems = unresolved(ROOT)
    assert problems == []
    # The code cites its documents well over a hundred times; finding few would mean the patterns broke.
    assert sum(1 for c in citations if c.number) > 100
    assert sum(1 for c in citations if c.name) > 10


def test_no_file_refers_to_documents_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in scanned_files(ROOT)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if any(outside in line for outside in OUTSIDE_PATHS)
    ]
    assert offenders == []


# --------------------------------------------------------------------------------------------------------------
# The checker itself, on a synthetic tree

_SYNTHETIC_DOC = """# A document

## 1. First

### 1.2 Second

a. an item
b. another item

## Named section (with a note)

```
# 9. not a heading: inside a code fence
```
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"docs/a.md": _SYNTHETIC_DOC, **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_checker_accepts_every_citation_form(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/good.py": '"""See a.md §1, §1.2 b and §1.2b; docs/a.md "Named section"."""\n# a.md §1.2.\n',
            "pkg/named.py": '# [a.md](a.md) "First", "Second" and "Named section"; `a.md`\'s "Second"\n',
            "pkg/Dockerfile": "# a.md §1\n",
            "docs/b.md": "# B\n\nSee [a.md](a.md) §1.2 and README.md.\n",
        },
    )
    citations, problems = unresolved(root)
    assert problems == []
    assert {(c.path, c.number) for c in citations if c.number} == {
        ("pkg/good.py", "1"),
        ("pkg/good.py", "1.2"),
        ("pkg/good.py", "1.2b"),
        ("pkg/Dockerfile", "1"),
        ("docs/b.md", "1.2"),
    }
    assert {c.name for c in citations if c.name} == {"Named section", "First", "Second"}


def test_the_checker_reports_made_up_citations(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/number.py": "# a.md §3.1\n",
            "pkg/letter.py": "# a.md §1.2c\n",
            "pkg/name.py": '# a.md "No such section"\n',
            "pkg/doc.py": "# missing.md §1\n",
            "pkg/bare.py": "# as §1 says\n",
            "pkg/fenced.py": "# a.md §9\n",
            "pkg/semantics.py": "# semantics §1\n",
        },
    )
    _, problems = unresolved(root)
    assert [problem.split(":")[0] for problem in problems] == [
        "pkg/bare.py",
        "pkg/doc.py",
        "pkg/doc.py",
        "pkg/fenced.py",
        "pkg/letter.py",
        "pkg/name.py",
        "pkg/number.py",
        "pkg/semantics.py",
    ]
