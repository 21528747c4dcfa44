"""The repository documents itself: docs/original-model.md has its fixed sections, and every pointer to
it from the code names one of them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    "Audio front end",
    "Whisper encoder",
    "BEATs encoder",
    "Q-Former and windows",
    "Prompt and LLM",
    "Generation",
    "Checkpoints",
    "Tokenizer",
    "Presets and downloads",
]


def _sources() -> list[Path]:
    folders = ("salmonn", "salmonn_cli", "tests", "benchmarks", "docs")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")]
    return [*files, ROOT / "README.md"]


def test_original_model_doc_has_the_fixed_sections_in_order():
    text = (ROOT / "docs" / "original-model.md").read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", text, re.MULTILINE) == SECTIONS


def test_every_pointer_to_the_doc_names_a_section():
    pointer = re.compile(r'original-model\.md,\s*(?:#\s*)?"([^"]+)"')
    found = 0
    for path in _sources():
        # a pointer may wrap onto a comment's next line
        text = re.sub(r"\n\s*#\s*", " ", path.read_text(encoding="utf-8"))
        for name in pointer.findall(text):
            found += 1
            assert name in SECTIONS, f"{path.relative_to(ROOT)} points to a missing section {name!r}"
    assert found >= 10  # the code does point there


def test_the_repository_cites_no_outside_document():
    """Facts about the original model live in docs/original-model.md, not in a document outside the
    repository: no section-sign citations, no appendix or revision labels of one."""
    banned = re.compile(r"spec §|§\s?\d|\bAppendix [A-Z]\b|\bApp\. [A-Z]\b|\bR2[34]\b|shared/SALMONN|\bspec key\b|\.\./shared\b")
    hits = []
    prompts = sorted((ROOT / "prompts").glob("*.json"))
    for path in [*_sources(), *prompts, ROOT / ".ci" / "run", ROOT / "pyproject.toml"]:
        if path.name == "test_docs.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if banned.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
