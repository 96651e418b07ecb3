"""docs/method.md is the project's description of the methods, cited by section ("docs/method.md §N"): every such
citation must name a section the document has. No TensorFlow: plain text checks."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "method.md"
# Where citations of the document are looked for (folders searched recursively).
CITING = ("exemplar_tf", "tests", "README.md", "BUILD_NOTES.md", "RESULTS.md", "flags", "experiments")
TEXT_SUFFIXES = {".py", ".md", ".cfg", ".sh", ".txt", ".toml", ".json", ".log"}
THIS_FILE = pathlib.Path(__file__).resolve()

HEADING = re.compile(r"^## §(\d+)\. \S", re.MULTILINE)
# "§4", "§ 4", "section 4", "§3–5" / "§3-5" (a range); a trailing ".2" or "." is not part of the number.
SECTION = r"(?:§\s*|section\s+)(\d+)(?:\s*[–-]\s*(\d+))?"
# Between the name and the section: spaces, or a line break (and a comment marker when a comment wraps).
GAP = r",?(?:[ \t]+|[ \t]*\n[ \t]*(?:#[ \t]*)?)"
DOC_CITATION = re.compile(r"docs/method\.md" + GAP + SECTION)
# The old private notes' name, upper case and without the docs/ prefix.
BARE_NAME = "METHOD" + ".md"
BARE_MENTION = re.compile(r"(?<![\w/])" + re.escape(BARE_NAME))
BARE_CITATION = re.compile(r"(?<![\w/])" + re.escape(BARE_NAME) + GAP + SECTION)


def doc_sections() -> set[int]:
    return {int(number) for number in HEADING.findall(DOC.read_text(encoding="utf-8"))}


def text_files(places=CITING):
    for place in places:
        path = ROOT / place
        if path.is_file():
            yield path
        elif path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix in TEXT_SUFFIXES and "__pycache__" not in child.parts:
                    yield child


def cited_sections(pattern: re.Pattern, places=CITING):
    """(file, line number, citation text, [section numbers]) for every match of `pattern` (ranges expanded)."""
    for path in text_files(places):
        if path.resolve() == THIS_FILE:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in pattern.finditer(text):
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) else first
            line = text.count("\n", 0, match.start()) + 1
            yield path.relative_to(ROOT), line, match.group(0), list(range(first, max(first, last) + 1))


def test_the_document_has_sections_1_to_7_in_order():
    numbers = [int(n) for n in HEADING.findall(DOC.read_text(encoding="utf-8"))]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    assert set(range(1, 8)) <= set(numbers)


def test_every_citation_of_the_document_names_one_of_its_sections():
    sections = doc_sections()
    bad = [f"{path}:{line}: {text!r}" for path, line, text, numbers in cited_sections(DOC_CITATION)
           if not set(numbers) <= sections]
    assert not bad, f"sections not in docs/method.md (it has {sorted(sections)}):\n" + "\n".join(bad)


def test_every_old_citation_can_be_rewritten_to_the_same_section():
    """The old citations keep their numbers when rewritten to docs/method.md, so each must exist there."""
    sections = doc_sections()
    bad = [f"{path}:{line}: {text!r}" for path, line, text, numbers in cited_sections(BARE_CITATION)
           if not set(numbers) <= sections]
    assert not bad, f"sections not in docs/method.md (it has {sorted(sections)}):\n" + "\n".join(bad)


def test_code_and_tests_no_longer_cite_the_private_notes():
    left = [f"{path}:{number}: {line.strip()}"
            for path in text_files(("exemplar_tf", "tests")) if path.resolve() != THIS_FILE
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if BARE_MENTION.search(line)]
    assert not left, f"cite docs/method.md §N instead of {BARE_NAME}:\n" + "\n".join(left)
