"""README.md and docs/: every relative link resolves, every anchor names a heading, docs/index.md
lists every page, and README stays a front page (under 300 lines).

Offline: ``http(s)://`` and other links with a scheme are skipped. A link ``[text](path#anchor)``
(or an image ``![alt](path)``) must name an existing file; where an anchor is given and the target
is a markdown file (the page itself for ``#anchor``), one of its headings must have that anchor as
its GitHub slug (:func:`github_slug`). Links inside code (fenced blocks, inline spans) are text, not
links, and headings inside fenced blocks (a bash comment) are not headings.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from conftest import REPO_ROOT

README_MAX_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")  # [name]: target
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (inline code and emphasis marks dropped, a link's
    text kept), lowercased, each space a '-', and every character that is not a letter, a digit, a
    combining mark, '-' or '_' removed (non-ASCII punctuation such as an en dash included), the rule
    of github-slugger, which github.com follows.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    out = []
    for char in text.strip().lower():
        if char == " ":
            out.append("-")
        elif char in "-_" or unicodedata.category(char)[0] in "LNM":
            out.append(char)
    return "".join(out)


def _text_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file offers: its headings' slugs (a repeated one as GitHub numbers
    it: ``x``, ``x-1``, ``x-2``) and ``<a name="...">`` / ``<a id="...">`` targets."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in _text_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in a markdown file, outside code."""
    found = []
    for number, line in _text_lines(path.read_text(encoding="utf-8")):
        reference = REFERENCE.match(line)
        if reference:
            found.append((number, reference.group(1)))
            continue
        prose = INLINE_CODE.sub("code", line)
        found.extend((number, target) for target in LINK.findall(prose))
    return found


def broken_links(path: Path) -> list[str]:
    """One line per link of ``path`` that does not resolve: ``file:line: target: why``."""
    problems = []
    for number, target in links(path):
        if not target or SCHEME.match(target):
            continue  # external (offline), mailto:, ...
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file {resolved}")
        elif anchor and resolved.suffix == ".md" and resolved.is_file() and anchor not in anchors(resolved):
            problems.append(f"{where}: {resolved.name} has no heading with the anchor #{anchor}")
    return problems


def pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


# ---- the slug, worked by hand ----------------------------------------------------------------

@pytest.mark.parametrize("heading, slug", [
    ("Rewards", "rewards"),
    ("Serving a judge with vLLM", "serving-a-judge-with-vllm"),
    # backticks dropped, the dot inside them too, the underscore kept
    ("A no-signal control (`advantage.shuffle_scores`)", "a-no-signal-control-advantageshuffle_scores"),
    # parentheses and '+' dropped; the spaces around '+' stay, so two dashes meet
    ("LTX-2 (audio + video)", "ltx-2-audio--video"),
    ("Wan2.2 (TI2V-5B and the two-expert A14B)", "wan22-ti2v-5b-and-the-two-expert-a14b"),
    # colons and commas dropped, their spaces kept
    ("Long runs: restarts, checkpoints, timeouts", "long-runs-restarts-checkpoints-timeouts"),
    ("One node: judges beside the trainer", "one-node-judges-beside-the-trainer"),
    # an en dash and an em dash are punctuation: dropped, not made '-'
    ("Training the CaC model (stages 1–3)", "training-the-cac-model-stages-13"),
    ("Stages 1 — 3", "stages-1--3"),
    ("`clap`, `audiobox` and `sync`: rewards that hear", "clap-audiobox-and-sync-rewards-that-hear"),
    ("## 1. Samples (`cac_align/cac/train/data.py`)".lstrip("# "), "1-samples-cac_aligncactraindatapy"),
    ("Which generators (a model is what its files say)", "which-generators-a-model-is-what-its-files-say"),
    ("**Bold** and [a link](x.md)", "bold-and-a-link"),
    ("Überblick", "überblick"),  # letters beyond ASCII are letters
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_anchors_number_repeated_headings_and_skip_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Setup\n\n```bash\n# not a heading\n```\n\n## Setup\n\n<a name=\"here\"></a>\n")
    assert anchors(page) == {"title", "setup", "setup-1", "here"}


# ---- the checker catches what it should -------------------------------------------------------

def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Running it\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/guide.md) [ok](docs/guide.md#running-it) ![ok](docs/guide.md) [ok](#top)\n"
        "# Top\n"
        "[web](https://example.com/missing.md) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n```\n"
        "[gone](docs/gone.md)\n"
        "[bad anchor](docs/guide.md#running)\n"
        "![gone image](docs/images/none.png)\n"
        "[self](#nowhere)\n"
        "[ref]: docs/also_gone.md\n"
    )
    problems = broken_links(page)
    assert [p.split(": ")[1] for p in problems] == [
        "docs/gone.md", "docs/guide.md#running", "docs/images/none.png", "#nowhere", "docs/also_gone.md"]


# ---- the repository's pages --------------------------------------------------------------------

@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_docs_index_lists_every_page():
    docs = REPO_ROOT / "docs"
    index = docs / "index.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index) if not SCHEME.match(target)}
    missing = [str(p.relative_to(docs)) for p in sorted(docs.rglob("*.md")) if p != index and p.resolve() not in linked]
    assert missing == [], f"docs/index.md does not link {missing}"


def test_readme_links_the_index_and_is_a_front_page():
    readme = REPO_ROOT / "README.md"
    assert any(target.partition("#")[0] == "docs/index.md" for _, target in links(readme))
    lines = len(readme.read_text(encoding="utf-8").splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move the detail to docs/ (a front page stays under {README_MAX_LINES})"


def test_readme_shows_the_main_job_and_the_install_ci_runs():
    """README's two commands are what CI runs: `.ci/run` installs with README's lines, and the main
    job README names is the shipped recipe the wheel check runs by name."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "cac-align score --config recipes/score/cac_demo.yaml" in readme
    assert (REPO_ROOT / "recipes/score/cac_demo.yaml").is_file()
    for line in ("python3 -m venv .venv", 'pip install -e ".[dev]"', "pip install --no-deps -r requirements-vbench.txt"):
        assert line in readme and line in ci, line


def test_readme_job_table_names_every_job():
    """One row per job: every job of the CLI's table (``cac_align.jobs.JOBS``) is named in README's
    job table (``eval-bench`` as README writes it, ``eval bench``), and each row links its guide."""
    from cac_align.jobs import JOBS

    rows = [line for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines() if line.startswith("| `cac-align ")]
    named = {word.removeprefix("cac-align ").replace(" ", "-") for row in rows for word in re.findall(r"`([^`]+)`", row.split(" | ")[0])}
    assert set(JOBS) - named == set()
    assert all("](docs/" in row for row in rows)
