"""docs/cli.md has a section for every command and names each of its options there."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from vmforensics.cli import build_parser
from vmforensics.cli.config import SETTINGS

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
#: Options described once for every command of a group, in the section named here.
SHARED = {"acquire": "Common acquire options", "survey": "Common survey options"}


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], set[str]]]:
    """(command path, long options) for every command that takes no further sub-command."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield (
            path,
            {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"},
        )
        return
    for name, child in subparsers[0].choices.items():
        yield from commands(child, (*path, name))


def sections() -> dict[str, str]:
    return dict(re.findall(r"^### ([^\n]+)\n(.*?)(?=^##|\Z)", PAGE.read_text(), re.DOTALL | re.MULTILINE))


def test_every_command_and_option_is_documented() -> None:
    found = sections()
    leaves = list(commands(build_parser()))
    assert len(leaves) >= 15
    for group, title in SHARED.items():
        shared = set.intersection(*(options for path, options in leaves if path[0] == group))
        missing = {o for o in shared if f"`{o}" not in found[title]}
        assert not missing, f"{title}: {missing}"
    for path, options in leaves:
        title = "vmforensics " + " ".join(path)
        assert title in found, f"docs/cli.md has no section '### {title}'"
        text = found[title] + found.get(SHARED.get(path[0], ""), "")
        missing = {o for o in options if f"`{o}" not in text}
        assert not missing, f"{title}: undocumented {missing}"


def test_every_configuration_setting_is_documented() -> None:
    text = PAGE.read_text()
    assert {key for key in SETTINGS if f"`{key}`" not in text} == set()
