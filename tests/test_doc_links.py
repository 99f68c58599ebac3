"""Every relative link in the README and docs/ resolves: the file exists and, for ``#anchor``, the
target has a heading with that GitHub slug (or an HTML ``id``/``name``). The manual lives in
several files, so a section moved or renamed breaks links that nothing else would notice."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support import REPO

pytestmark = pytest.mark.unit

#: The pages checked: the front page, the changelog, the manual, the benchmarks' page and the runbooks.
PAGES = sorted(
    [
        REPO / "README.md",
        REPO / "CHANGELOG.md",
        REPO / "bench" / "README.md",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "alerts" / "runbooks").glob("*.md"),
    ]
)

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _prose(markdown: str) -> str:
    """The text outside fenced code blocks (blank lines kept, so line numbers stay right)."""
    return _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lowercased, punctuation dropped, spaces
    made hyphens (github-slugger). Inline code, emphasis and link targets are not text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, _ and -, of any script
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats numbered -1, -2 as GitHub does)
    and explicit HTML ``id``/``name`` attributes."""
    prose = _prose(markdown)
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(prose):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(_HTML_ANCHOR.findall(prose))
    return found


def links(markdown: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline, image and reference-definition link outside code."""
    prose = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), _prose(markdown))
    found = [(m.start(), m.group(1)) for m in _INLINE_LINK.finditer(prose)]
    found += [(m.start(), m.group(1)) for m in _DEFINITION.finditer(prose)]
    return [(prose.count("\n", 0, start) + 1, target) for start, target in sorted(found)]


def broken_links(page: Path, root: Path) -> list[str]:
    """Why each relative link of ``page`` does not resolve inside ``root``; empty when all do."""
    problems = []
    for line, target in links(page.read_text()):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # absolute: not ours to check offline
        path_part, _, fragment = target.partition("#")
        where = f"{page.relative_to(root)}:{line}: {target}"
        resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
        if root.resolve() not in (resolved, *resolved.parents):
            problems.append(f"{where}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if fragment:
            if resolved.is_dir() or resolved.suffix != ".md":
                problems.append(f"{where}: an anchor into something that is not a Markdown page")
            elif unquote(fragment) not in anchors(resolved.read_text()):
                problems.append(f"{where}: no heading with slug #{fragment} in {resolved.relative_to(root.resolve())}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page, REPO) == []


def test_the_front_page_stays_short_and_maps_every_doc() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    linked = {target.partition("#")[0] for _, target in links(readme)}
    for doc in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in linked, f"README.md's map of docs/ does not link {doc.name}"


def test_github_slugs() -> None:
    assert github_slug("The trail page (`trail serve`, trail-web)") == "the-trail-page-trail-serve-trail-web"
    assert github_slug("Task runs (correlation.celery)") == "task-runs-correlationcelery"
    assert github_slug("Grafana's links into Loki") == "grafanas-links-into-loki"
    assert github_slug("Walkthrough: from a spike to the request that failed") == (
        "walkthrough-from-a-spike-to-the-request-that-failed"
    )


def test_a_broken_file_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Same\n\n## Same\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#a-page) [ok](docs/a.md#same-1) [ok](#top) [ok](https://x.test/y)\n"
        "# Top\n"
        "`[in code](nowhere.md)`\n\n```\n[in a fence](nowhere.md)\n```\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#same-2) [code heading](docs/a.md#not-a-heading)\n"
        "![gone image](docs/b.png) [self](#nope) [out](../outside.md)\n\n[def]: docs/c.md\n"
    )
    problems = broken_links(page, tmp_path)
    assert [problem.split(": ")[1] for problem in problems] == [
        "docs/b.md",
        "docs/a.md#same-2",
        "docs/a.md#not-a-heading",
        "docs/b.png",
        "#nope",
        "../outside.md",
        "docs/c.md",
    ], problems
