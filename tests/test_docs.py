"""The repository documents itself: docs/original-model.md has its fixed sections, and every pointer to
it from the code names one of them; README is a short front door that opens with the commands the CI
runs, every relative link of README and docs/ leads to a file and heading, and the Python names the user
pages document can be imported."""

from __future__ import annotations

import importlib
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
    "Training",
]


def _sources() -> list[Path]:
    folders = ("salmonn", "salmonn_cli", "tests", "benchmarks", "docs")
    files = [
        p for folder in folders for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")
    ]
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
            assert name in SECTIONS, (
                f"{path.relative_to(ROOT)} points to a missing section {name!r}"
            )
    assert found >= 10  # the code does point there


def _outside_references(path: Path, line: str, names: set[str]) -> list[str]:
    """What ``line`` of ``path`` points at outside the repository: a Markdown file that no folder of
    the repository holds, or a ``../`` path that leaves it or leads nowhere."""
    found = [m for m in MD_FILE.findall(line) if m.rsplit("/", 1)[-1] not in names]
    for rel in UP_PATH.findall(line):
        target = (path.parent / rel).resolve()
        if not (target.is_relative_to(ROOT) and target.exists()):
            found.append(rel)
    return found


MD_FILE = re.compile(r"(?<![\w/.-])((?:\.\.?/)*[\w./-]*?[\w-]+\.md)\b")
UP_PATH = re.compile(r"(?<![\w.])((?:\.\./)+[\w./-]+)")


def test_the_repository_cites_no_outside_document():
    """Facts about the original model live in docs/original-model.md, not in a document outside the
    repository: every Markdown file named exists here, every ``../`` path stays inside, and there
    are no section-sign citations or appendix or revision labels of one."""
    banned = re.compile(r"spec §|§\s?\d|\bAppendix [A-Z]\b|\bApp\. [A-Z]\b|\bR2[34]\b|\bspec key\b")
    names = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    hits = []
    prompts = sorted((ROOT / "prompts").glob("*.json"))
    for path in [*_sources(), *prompts, ROOT / ".ci" / "run", ROOT / "pyproject.toml"]:
        if path.name == "test_docs.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            outside = _outside_references(path, line, names)
            if banned.search(line) or outside:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_outside_references_are_found(tmp_path):
    doc = ROOT / "docs" / "cli.md"
    names = {"README.md", "cli.md"}
    assert _outside_references(doc, "see [the README](../README.md#install)", names) == []
    assert _outside_references(doc, "as NOTES_ELSEWHERE.md says", names) == ["NOTES_ELSEWHERE.md"]
    assert _outside_references(doc, "read ../../notes/x.txt", names) == ["../../notes/x.txt"]


# --- README is a front door; every relative link in the docs leads somewhere ---------------------------

# pages that other work is writing: README links them before they land; once a page exists it is checked
# like any other
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, markup and punctuation dropped, spaces to hyphens, repeats
    numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", text), re.MULTILINE):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        name = dest.relative_to(root).as_posix() if dest.is_relative_to(root) else str(dest)
        if not dest.exists():
            broken.append(f"{page.relative_to(root)}: {target} (no such file)")
            continue
        if (
            anchor
            and dest.suffix == ".md"
            and anchor not in _anchors(dest.read_text(encoding="utf-8"))
        ):
            broken.append(f"{page.relative_to(root)}: {target} (no heading #{anchor} in {name})")
    return broken


def _doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_leads_to_a_file_and_heading():
    pages = _doc_pages()
    assert len(pages) >= 9  # README and the docs/ pages
    broken = [line for page in pages for line in _broken_links(page)]
    assert not broken, "\n".join(broken)


def test_the_link_check_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## Model selection: `--model`\n\n## Model selection: `--model`\n",
        encoding="utf-8",
    )
    page = tmp_path / "README.md"
    page.write_text(
        "# x\n\n[ok](docs/a.md#model-selection---model-1) [ok](#x) [web](https://example.org/#nope)\n"
        "[gone](docs/b.md) [no heading](docs/a.md#model-selection-model) `[code](docs/c.md)`\n"
        "```\n[fenced](docs/d.md)\n```\n",
        encoding="utf-8",
    )
    broken = _broken_links(page, root=tmp_path)
    assert broken == [
        "README.md: docs/b.md (no such file)",
        "README.md: docs/a.md#model-selection-model (no heading #model-selection-model in docs/a.md)",
    ]


def test_readme_is_a_short_front_door_that_starts_with_the_ci_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 250, f"README.md has {len(readme)} lines: move reference text to docs/"
    assert readme[0].startswith("# ")
    body = [line for line in readme[1:] if line.strip()]
    assert body[0].startswith("```"), "README must open with the set-up commands"
    end = body.index("```", 1)
    commands = body[1:end]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert len(commands) == 2
    for command in commands:
        assert command in ci, f"README's set-up command is not what .ci/run runs: {command}"
    # the table of further reading links every reference page
    text = "\n".join(readme)
    for page in ("cli", "library", "serving", "clusters", "fidelity", "speed", "weights"):
        assert f"(docs/{page}.md)" in text, f"README does not link docs/{page}.md"


# the pages that document the public API by its dotted names
API_PAGES = (
    "README.md",
    "docs/cli.md",
    "docs/library.md",
    "docs/weights.md",
    "docs/serving.md",
    "docs/clusters.md",
)


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ModuleNotFoundError(dotted)


def test_documented_python_names_exist():
    """Every `salmonn.x.y` the user docs name can be imported (the prompt data is a folder)."""
    names = set()
    for name in API_PAGES:
        text = (ROOT / name).read_text(encoding="utf-8")
        names.update(re.findall(r"(?<![\w/.-])salmonn(?:\.[A-Za-z_]\w*)+", text))
        for module, imported in re.findall(
            r"^from (salmonn[\w.]*) import ([\w, ]+)$", text, re.MULTILINE
        ):
            names.update(f"{module}.{name.strip()}" for name in imported.split(","))
    names = {n.rstrip(".") for n in names if not n.endswith(".pth")} - {"salmonn.prompt_data"}
    assert {"salmonn.run_task", "salmonn.load_model", "salmonn.jobs.templates.render"} <= names
    missing = []
    for dotted in sorted(names):
        try:
            _resolve(dotted)
        except (ImportError, AttributeError) as err:
            missing.append(f"{dotted}: {err}")
    assert not missing, "\n".join(missing)
