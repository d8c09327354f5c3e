"""Every walkthrough in docs/walkthroughs/ runs top to bottom (its asserts included), makes the
figures it shows, and links only to files that exist: the teaching text cannot silently rot."""
import re
import traceback
from pathlib import Path

import pytest

from tinyconv import walkthrough

DOCS = Path(__file__).resolve().parent.parent / "docs" / "walkthroughs"
WALKTHROUGHS = sorted(DOCS.glob("[0-9]*.md"))
# Relative Markdown links and images: [text](target) with no scheme and no leading '#'.
LINK = re.compile(r"\]\((?!https?:|#|mailto:)([^)\s#]+)(?:#[^)]*)?\)")


EXPECTED_NUMBERS = {1, 2, 3, 4, 5, 6, 7, 8, 9}
MAY_BE_MISSING = set()
# A link to lines of a source file: [`name`](path#L10-L25) or [`name`](path#L10).
LINE_LINK = re.compile(r"\[`([A-Za-z_][\w.]*)(?:\(\))?`\]\(((?!https?:)[^)\s#]+)#L(\d+)(?:-L(\d+))?\)")


def test_the_walkthroughs_are_the_expected_set_and_the_index_links_each():
    numbers = [int(p.name.split("-", 1)[0]) for p in WALKTHROUGHS]
    assert len(numbers) == len(set(numbers)), f"two walkthroughs share a number: {[p.name for p in WALKTHROUGHS]}"
    assert EXPECTED_NUMBERS - MAY_BE_MISSING <= set(numbers) <= EXPECTED_NUMBERS, [p.name for p in WALKTHROUGHS]
    index = (DOCS / "README.md").read_text()
    for p in WALKTHROUGHS:
        assert f"]({p.name})" in index, f"docs/walkthroughs/README.md does not link {p.name}"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=[p.stem for p in WALKTHROUGHS])
def test_line_links_point_at_what_they_name(path):
    """A link such as [`relative_error`](../../tinyconv/gradcheck.py#L28-L31) must still land on the
    definition it names: the first line of the range defines it (def, class or an assignment)."""
    for name, target, start, end in LINE_LINK.findall(path.read_text()):
        lines = (path.parent / target).read_text().splitlines()
        start, end = int(start), int(end or start)
        assert 1 <= start <= end <= len(lines), f"{path.name}: {target}#L{start}-L{end} is past the file's end"
        first = lines[start - 1].strip()
        short = name.split(".")[-1]
        assert re.match(rf"(async\s+)?(def|class)\s+{re.escape(short)}\b|{re.escape(short)}\s*=", first), \
            f"{path.name}: the link to `{name}` points at line {start} of {target}, which reads {first!r}"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=[p.stem for p in WALKTHROUGHS])
def test_walkthrough_runs_and_makes_its_figures(path, tmp_path):
    figures = tmp_path / "figures"
    result = walkthrough.run(path, figures=figures, workdir=tmp_path)
    assert result.blocks_run > 0
    shown = walkthrough.figure_refs(path.read_text())
    for name in shown:
        made = figures / name
        assert made.is_file() and made.stat().st_size > 1000, f"{path.name} shows figures/{name} but did not make it"
        assert (DOCS / "figures" / name).is_file(), \
            f"figures/{name} is not committed: run python -m tinyconv.walkthrough {path.relative_to(DOCS.parent.parent)}"
    unshown = set(result.figures) - set(shown)
    assert not unshown, f"{path.name} makes figures it never shows: {sorted(unshown)}"


@pytest.mark.parametrize("path", WALKTHROUGHS + [DOCS / "README.md"], ids=lambda p: p.stem)
def test_relative_links_resolve(path):
    text = path.read_text()
    for target in LINK.findall(text):
        assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def _slug(heading):
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", WALKTHROUGHS + [DOCS / "README.md"], ids=lambda p: p.stem)
def test_section_links_land_on_a_heading(path):
    """[text](other.md#section) and [text](#section) must name a heading that exists."""
    for target, anchor in re.findall(r"\]\(((?!https?:)[^)\s#]*\.md|)#([^)\s]+)\)", path.read_text()):
        page = path.parent / target if target else path
        prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)     # not code comments
        headings = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", prose, re.M)}
        assert anchor in headings, f"{path.name} links to {target or path.name}#{anchor}, which has no such heading"


def test_runner_reports_markdown_line_numbers(tmp_path):
    md = tmp_path / "w.md"
    md.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'drifted'\n```\n")
    with pytest.raises(AssertionError, match="drifted") as info:
        walkthrough.run(md, figures=tmp_path / "f", workdir=tmp_path)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [f.lineno for f in frames if f.filename == str(md)] == [10]


def test_runner_skips_blocks_whose_module_is_missing(tmp_path):
    md = tmp_path / "w.md"
    md.write_text("```python skip-if-missing=no_such_module_xyz\nimport no_such_module_xyz\n```\n"
                  "```python\ny = 2\n```\n")
    result = walkthrough.run(md, figures=tmp_path / "f", workdir=tmp_path)
    assert result.blocks_run == 1 and result.skipped == [(2, "no_such_module_xyz is not installed")]


def test_the_command_leaves_the_committed_figures_alone_unless_asked(tmp_path, monkeypatch, capsys):
    """A reader rerunning a walkthrough as the README shows gets the figures in ./walkthrough-figures/, and
    git status stays clean; --update-figures is the maintainer's way to rewrite docs/walkthroughs/figures/."""
    from tinyconv.walkthrough import main
    md = tmp_path / "docs" / "w.md"
    md.parent.mkdir()
    md.write_text("```python\nfrom tinyconv.walkthrough import figures_dir\n"
                  "(figures_dir() / 'f.png').write_bytes(b'png')\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([str(md)]) == 0
    assert (work / "walkthrough-figures" / "f.png").is_file() and not (md.parent / "figures" / "f.png").exists()
    assert main(["--update-figures", str(md)]) == 0
    assert (md.parent / "figures" / "f.png").is_file()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.md")])
    assert "no such walkthrough file" in capsys.readouterr().err
