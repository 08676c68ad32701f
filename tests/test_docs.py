"""Every `--option` the README and docs/ name exists for the command they name it for.

The options of each command are read from its `--help` (so they follow the CLI as it is), plus,
for `train`, every `TrainingArguments` field (`--learning_rate`, `--learning-rate`).

Two checks, kept simple on purpose:

1. Command lines. In code blocks and inline code, each `segtune <command> ...` (also after
   `.venv/bin/`, `python -m`, `torchrun ... -m`) is read up to the end of the line (joined over
   trailing backslashes), a `&&` or `;`, or a ` #` comment; every `--flag` on it must be an
   option of that command.
2. Pages and sections. Every other `--flag` in inline code on a page must be an option of one
   of the commands the page is about (docs/train.md -> train, ...), or of the commands named
   in the headings of the section it is in; on a page about no command, of any command.
   Inline code that starts with another program (torchrun, pip, make, python ...) is skipped
   there, and the benchmark pages are left out of this check (their options are the
   benchmark modules').
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from functools import cache
from pathlib import Path

import pytest

from segtune.cli import main

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("demo", "train", "evaluate", "predict", "report", "inspect", "export", "serve")
ALWAYS = {"--help", "--debug"}

# page (relative to the repository) -> the commands it is about; None: no inline check
PAGE_COMMANDS: dict[str, tuple[str, ...] | None] = {
    "docs/train.md": ("train",),
    "docs/evaluate.md": ("evaluate",),
    "docs/predict.md": ("predict",),
    "docs/report.md": ("report",),
    "docs/data.md": ("inspect", "train"),
    "docs/demo.md": ("demo", "train"),
    "docs/export.md": ("export", "predict", "evaluate"),
    "docs/serve.md": ("serve", "predict"),
    "docs/imagery.md": ("train", "predict", "evaluate", "inspect"),
    "docs/benchmarks.md": None,
    "benchmarks/README.md": None,
}

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
COMMAND = re.compile(r"(?<![\w.-])segtune\s+(" + "|".join(COMMANDS) + r")\b")
OTHER_PROGRAM = re.compile(r"^\s*(torchrun|accelerate|python3?|pip|make|pytest|git|\.venv/|\S+/python)\b")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
INLINE = re.compile(r"`([^`]+)`")


def pages() -> list[Path]:
    found = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    if (REPO / "benchmarks" / "README.md").is_file():
        found.append(REPO / "benchmarks" / "README.md")
    return [p for p in found if p.is_file()]


def page_id(path: Path, root: Path = REPO) -> str:
    return path.relative_to(root).as_posix()


# ---------------------------------------------------------------- the CLI's options


@cache
def help_text(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([command, "--help"])
        except SystemExit as e:
            assert e.code in (0, None), f"segtune {command} --help exited with {e.code}"
    return out.getvalue()


@cache
def training_argument_fields() -> frozenset[str]:
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


@cache
def options(command: str) -> frozenset[str]:
    text = help_text(command)
    assert "usage:" in text, f"no help for segtune {command}:\n{text}"
    text = re.sub(r"-\n\s+", "-", text)  # argparse wraps help text at hyphens: "--no-\n    photometric"
    return frozenset(FLAG.findall(text)) | ALWAYS


def is_option(command: str, flag: str) -> bool:
    if flag in options(command):
        return True
    return command == "train" and flag[2:].replace("-", "_") in training_argument_fields()


def is_option_of_any(commands, flag: str) -> bool:
    return any(is_option(c, flag) for c in commands)


# ---------------------------------------------------------------- reading the pages


@dataclasses.dataclass
class Span:
    text: str
    line: int
    in_code_block: bool
    section_commands: tuple[str, ...]


def spans(path: Path) -> list[Span]:
    """Code-block lines (joined over trailing backslashes) and inline code spans, with the
    commands named by the headings of the section each is in."""
    out: list[Span] = []
    headings: list[tuple[int, tuple[str, ...]]] = []  # (level, commands) of the enclosing headings
    in_block = False
    pending, pending_line = "", 0
    paragraph: list[tuple[int, str]] = []

    def section() -> tuple[str, ...]:
        return tuple(c for _, cs in headings for c in cs)

    def flush_paragraph():
        if not paragraph:
            return
        text = "\n".join(line for _, line in paragraph)
        starts = [0]
        for _, line in paragraph:
            starts.append(starts[-1] + len(line) + 1)
        for m in INLINE.finditer(text):
            row = next(i for i in range(len(paragraph)) if starts[i + 1] > m.start())
            out.append(Span(m.group(1).replace("\n", " "), paragraph[row][0], False, section()))
        paragraph.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            flush_paragraph()
            in_block = not in_block
            continue
        if in_block:
            if pending:
                pending += " " + line.strip()
            else:
                pending, pending_line = line, number
            if pending.rstrip().endswith("\\"):
                pending = pending.rstrip()[:-1]
                continue
            out.append(Span(pending, pending_line, True, section()))
            pending = ""
            continue
        heading = HEADING.match(line)
        if heading:
            flush_paragraph()
            level = len(heading.group(1))
            while headings and headings[-1][0] >= level:
                headings.pop()
            headings.append((level, tuple(dict.fromkeys(COMMAND.findall(heading.group(2))))))
            continue
        if not line.strip():
            flush_paragraph()
            continue
        paragraph.append((number, line))
    flush_paragraph()
    return out


def command_lines(text: str) -> list[tuple[str, str]]:
    """(command, the rest of its command line) for each `segtune <command>` in `text`."""
    found = []
    for part in re.split(r"&&|;", text):
        part = re.split(r"\s#", part, maxsplit=1)[0]
        matches = list(COMMAND.finditer(part))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(part)
            found.append((m.group(1), part[m.end():end]))
    return found


def unknown_options(path: Path, root: Path = REPO) -> list[str]:
    page = page_id(path, root)
    page_commands = PAGE_COMMANDS.get(page, ())
    problems = []
    for span in spans(path):
        lines = command_lines(span.text)
        for command, rest in lines:
            for flag in FLAG.findall(rest):
                if not is_option(command, flag):
                    problems.append(f"{page}:{span.line}: `segtune {command}` has no option {flag}")
        if span.in_code_block or lines or page_commands is None or OTHER_PROGRAM.match(span.text):
            continue
        commands = tuple(dict.fromkeys((*page_commands, *span.section_commands))) or COMMANDS
        for flag in FLAG.findall(span.text):
            if not is_option_of_any(commands, flag):
                problems.append(f"{page}:{span.line}: {flag} is no option of segtune {' / '.join(commands)}")
    return problems


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    assert len(options(command)) > len(ALWAYS), f"segtune {command} --help lists no options"


@pytest.mark.parametrize("page", [page_id(p) for p in pages()])
def test_options_named_in_docs_exist(page):
    problems = unknown_options(REPO / page)
    assert not problems, "options the docs name that the CLI lacks:\n" + "\n".join(problems)


def test_the_docs_pages_exist():
    for page in ("docs/data.md", "docs/train.md", "docs/evaluate.md", "docs/predict.md", "docs/report.md",
                 "docs/benchmarks.md"):
        assert (REPO / page).is_file(), f"{page} is missing"


def test_the_checker_finds_an_unknown_option(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "train.md"
    page.write_text("# `segtune train`\n\n```bash\nsegtune train --data x \\\n    --no-such-option 1\n```\n\n"
                    "Inline: `--learning-rate` and `--also-missing`, `segtune predict --tta`, `pip install --upgrade`.\n"
                    "\n## `segtune predict`\n\n`--fold-head` here is predict's.\n")
    problems = unknown_options(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert "docs/train.md:4" in problems[0] and "--no-such-option" in problems[0]
    assert "--also-missing" in problems[1]
