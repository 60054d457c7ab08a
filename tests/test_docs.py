"""The README and the guides hold together: every relative link and image resolves (heading anchors
in GitHub's slug style included), the README's install and test commands are the ones CI and the
install script run, and every ``--help`` ends with a pointer to a guide that exists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from talkfast.app import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (a ``[x](y)`` there is no link)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, inline markup and punctuation dropped (word
    characters, hyphens and spaces kept), spaces to hyphens."""
    text = re.sub(r"\]\([^)]*\)", "]", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_slug_matches_github_style():
    assert slug("The sampler axis, held out: DDIM vs DPM-Solver++ 2M vs UniPC (2026-12-07)") == \
        "the-sampler-axis-held-out-ddim-vs-dpm-solver-2m-vs-unipc-2026-12-07"
    assert slug("Watching while it works: `--stream`") == "watching-while-it-works---stream"
    assert slug("Input preparation for Hallo") == "input-preparation-for-hallo"


def test_link_pattern_finds_links_and_images_not_code():
    text = "see [a](x.md#b) and ![p](img/p.png \"t\"), `[c](no.md)`, [d](https://e.org)\n```\n[f](g.md)\n```\n"
    assert LINK.findall(_prose(text)) == ["x.md#b", "img/p.png", "https://e.org"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(doc):
    problems = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            problems.append(f"{target}: no file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


def test_readme_links_every_guide():
    readme_targets = {(ROOT / t.partition("#")[0]).resolve() for t in _links(ROOT / "README.md")}
    guides = sorted((ROOT / "docs").glob("*.md"))
    missing = [p.name for p in guides if p.resolve() not in readme_targets]
    assert not missing, f"README.md does not link these guides: {missing}"


def _bash_blocks(path: Path) -> list[str]:
    """Command lines of the ```bash blocks of ``path``, each without its trailing comment."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            lines.append(re.sub(r"\s+#.*$", "", line).strip())
    return lines


def test_readme_install_and_test_commands_are_what_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    install = next(line for line in ci if line.endswith("scripts/install.sh"))
    tests = next(line for line in ci if " -m pytest " in line)  # the first: "the README's test command"
    readme = _bash_blocks(ROOT / "README.md")
    assert install in readme, f"README's quick start lacks CI's install command {install!r}"
    assert tests in readme, f"README's tests lack CI's test command {tests!r}"


def test_readme_generate_command_is_what_the_install_script_provides():
    script = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert "-m venv .venv" in script and re.search(r"\.venv/bin/python -m pip install .*-e ", script)
    assert ".venv/bin/talkfast" in script  # the hint it prints at the end uses the same entry point
    generate = [line for line in _bash_blocks(ROOT / "README.md") if line.startswith(".venv/bin/talkfast generate")]
    assert generate, "README's quick start has no `.venv/bin/talkfast generate` command"
    args = cli.build_parser().parse_args(shlex.split(generate[0])[1:])
    assert args.command == "generate"


def _help_parsers() -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(command as typed, top-level subcommand, parser) for the program, every subcommand and
    their own subcommands."""
    parser = cli.build_parser()
    out = [("talkfast", "", parser)]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out.append((f"talkfast {name}", name, p))
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += [(f"talkfast {name} {n}", name, q) for n, q in action.choices.items()]
    return out


def test_every_help_ends_with_an_existing_guide():
    problems = []
    parsers = _help_parsers()
    assert {"generate", "batch", "tune", "bench", "train", "data", "demo"} <= {top for _, top, _ in parsers}
    for typed, _, parser in parsers:
        last = parser.format_help().rstrip().splitlines()[-1]
        m = re.fullmatch(r"Guide: (\S+) \(in the talkfast repository\)", last)
        if not m:
            problems.append(f"{typed} --help ends with {last!r}")
        elif not (ROOT / m.group(1)).is_file():
            problems.append(f"{typed} --help names {m.group(1)}, which does not exist")
    assert not problems, "; ".join(problems)


def test_readme_is_short_and_its_pictures_are_small():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    images = [t for t in LINK.findall(_prose(readme)) if t.endswith((".png", ".gif"))]
    assert any("docs/images/" in t for t in images), "README shows no picture of a generated video"
    for target in images:
        assert (ROOT / target).stat().st_size < 1_000_000, f"{target} is over 1 MB"


def test_docs_date_their_statements_not_work_sessions():
    pattern = re.compile(r"\b(session [0-9]+|sessions?\s+[0-9]|(three|two|earlier) sessions|this session's)\b", re.IGNORECASE)
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)!r}"
            for p in DOCS for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert not hits, "name a date instead: " + "; ".join(hits)
