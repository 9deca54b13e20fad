"""The README says what the code does: the transition table, and every private Dagster import."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from analysis_wrapper.lifecycle import state_table

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def test_readme_shows_the_lifecycle_state_table() -> None:
    assert state_table() in README


def test_every_private_dagster_import_is_listed_in_the_readme() -> None:
    private = README[README.index("### Private Dagster APIs") :]
    private = private[: private.index("\n## ")]
    found = []
    for path in sorted((REPO_ROOT / "analysis_wrapper").rglob("*.py")):
        for line in path.read_text().splitlines():
            match = re.search(r"(?:from|import) (dagster\._[\w.]+)", line)
            if match:
                found.append((path.relative_to(REPO_ROOT / "analysis_wrapper").as_posix(), match.group(1)))
    for module_path, name in found:
        assert module_path in private and name in private, f"{module_path} imports {name}: list it and why"


# ---- every command of the walkthrough and the CLI sections works as written (issue 20 item 4) ---------

VENV_BIN = Path(sys.executable).parent
"""The project's ``.venv/bin``: the README says once how to put it on ``PATH``."""
TEAM_SECTIONS = ("## Your own analysis project", "## Switching from the capsule")
"""The sections a team follows to start its own project or bring its capsule (issue 19)."""
COMMAND_SECTIONS = ("# analysis_wrapper", "## Walkthrough", "## CLI", "## Dagster UI and CLI", *TEAM_SECTIONS)
"""The README sections whose shell commands a new user copies first."""
STANDARD_TOOLS = {"bash", "cat", "cp", "mkdir", "python3", "export", "source", "cd", "git"}
"""Programs and shell builtins a shell has without the project; any other must be in ``.venv/bin``."""


def section(title: str) -> str:
    start = README.index(title) if README.startswith(title) else README.index("\n" + title)
    end = README.find("\n## ", start + len(title) + 1)
    return README[start : end if end >= 0 else len(README)]


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands (as words) of ``text``'s bash blocks and of its inline code spans that start
    with a project program: continuation lines joined, here-documents and comments left out, ``$(...)``
    taken out as commands of their own, split at ``&&``, ``||``, ``|``, ``;``, ``&`` and parentheses."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        heredoc = None
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if heredoc is not None:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            marker = re.search(r"<<-?'?(\w+)'?", line)
            heredoc = marker.group(1) if marker else None
            lines.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n   ", " ")
    for span in re.findall(r"`([^`\n]+)`", prose):
        if re.match(r"(\w+=\S+ )*(\.venv/bin/)?(analysis-wrapper|dagster(-\w+)?)(\s|$)", span):
            lines.append(span)
    commands = []
    for line in lines:
        for part in substitutions(line.replace("…", "...")):
            lexer = shlex.shlex(part, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for word in [*lexer, ";"]:
                if word in {"&&", "||", "|", ";", "&", "(", ")"}:
                    commands += [command] if command else []
                    command = []
                else:
                    command.append(word)
    return commands


def substitutions(line: str) -> list[str]:
    """``line`` with each ``$(...)`` replaced by a word, then the commands inside each ``$(...)``."""
    outer, inner, done = [], [], 0
    while (start := line.find("$(", done)) >= 0:
        depth, end, quote = 1, start + 2, ""
        while depth:
            char = line[end]
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            else:
                depth += {"(": 1, ")": -1}.get(char, 0)
            end += 1
        outer.append(line[done:start] + "SUBSTITUTED")
        inner.append(line[start + 2 : end - 1])
        done = end
    return ["".join(outer) + line[done:], *inner]


def program_and_args(words: list[str]) -> tuple[str, list[str]]:
    """The program a simple command runs (after its ``VAR=value`` assignments) and its arguments."""
    at = 0
    while at < len(words) and re.match(r"\w+=", words[at]):
        at += 1
    return (words[at], words[at + 1 :]) if at < len(words) else ("", [])


def help_text(*args: str) -> str:
    from analysis_wrapper.cli.app import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--help"])
    return out.getvalue()


def options_of(help_: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", help_))


def test_the_readme_says_how_to_put_the_venv_on_path_before_its_commands() -> None:
    top = README[: README.index("## Walkthrough")]
    assert "source .venv/bin/activate" in top and 'export PATH="$PWD/.venv/bin:$PATH"' in top
    demo = (REPO_ROOT / "scripts" / "demo.sh").read_text()
    assert "source .venv/bin/activate" in demo and "dagster dev -w workspace.yaml" in demo


def test_every_readme_command_names_a_program_there_is() -> None:
    commands = [c for title in COMMAND_SECTIONS for c in shell_commands(section(title))]
    programs = {program_and_args(c)[0] for c in commands} - {""}  # "" : KEY="$(...)" sets a variable
    assert {"analysis-wrapper", "bash", ".venv/bin/dagster"} <= programs, programs
    for program in programs:
        name = program.removeprefix(".venv/bin/")
        where = VENV_BIN / name
        assert program.startswith("scripts/") or where.is_file() or program in STANDARD_TOOLS, (
            f"the README runs {program!r}: not in .venv/bin, not a standard tool"
        )
        if program.startswith(".venv/bin/"):
            assert where.is_file(), program


def test_every_analysis_wrapper_command_in_the_readme_names_a_real_subcommand_and_options() -> None:
    commands = shell_commands(README)
    calls = [program_and_args(c)[1] for c in commands if program_and_args(c)[0].endswith("analysis-wrapper")]
    assert len(calls) >= 10, calls
    top = help_text()
    top_options = options_of(top.split("\noptions:")[1])
    subcommands = set(re.search(r"\{([\w,-]+)\}", top).group(1).split(","))  # type: ignore[union-attr]
    helps: dict[str, set[str]] = {}
    for args in calls:
        words = [w.strip("[]") for w in args]
        named = [w for w in words if w and not w.startswith("-") and w != "..."]
        if not named:  # a fragment ("analysis-wrapper --verbose ...")
            assert {w.split("=")[0] for w in words if w.startswith("-")} <= top_options, args
            continue
        for sub in named[0].split("/"):  # "run/submit": either
            assert sub in subcommands, f"`analysis-wrapper {' '.join(args)}`: no subcommand {sub!r}"
            if sub not in helps:
                helps[sub] = options_of(help_text(sub))
            for word in words:
                if word.startswith("-") and word not in {"-", "--"}:
                    option = word.split("=")[0]
                    known = helps[sub] | top_options
                    assert option in known, f"`analysis-wrapper {' '.join(args)}`: no option {option}"


def test_the_team_sections_commands_are_checked_and_name_what_the_package_installs() -> None:
    """The two team sections are among the checked ones, with the commands a team runs (``new``, with and
    without ``--from-capsule``; ``submit``, ``status``, ``run``, ``results``; ``pip``; ``dagster dev`` on the
    instance ``run`` used), and the analysis-pipeline-utils pins they give are those ``setup.sh`` installs."""
    calls = {title: [program_and_args(c) for c in shell_commands(section(title))] for title in TEAM_SECTIONS}
    own, capsule = calls.values()
    assert {"new", "run"} <= {args[0] for program, args in own if program == "analysis-wrapper" and args}
    assert {"submit", "status", "run", "results", "new"} <= {
        args[0] for program, args in capsule if program == "analysis-wrapper" and args
    }
    assert any(program == "analysis-wrapper" and "--from-capsule" in args for program, args in capsule)
    assert ("pip", ["install", "-e", ".[dev]"]) in own
    blocks = "".join(re.findall(r"```bash\n(.*?)```", section(TEAM_SECTIONS[0]), re.S))
    dev = [c for c in shell_commands(f"```bash\n{blocks}```") if program_and_args(c) == ("dagster", ["dev"])]
    assert dev == [["DAGSTER_HOME=$PWD/.dagster_home", "dagster", "dev"]], dev  # the instance `run` used
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    pins = re.findall(r"[\w-]+==[\w.]+", section(TEAM_SECTIONS[1]))
    assert {"codeocean==0.15.0", "analysis-pipeline-utils==0.2.8"} <= set(pins), pins
    assert all(pin in setup for pin in pins), pins
