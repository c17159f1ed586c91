"""Every example printed by `--help` (of any command) runs as written, in order, on a real VM folder.

The examples' placeholder paths are mapped onto a temporary datastore and case folder; nothing else
in the command line is changed, so an example that needs an option it does not show fails here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from vmforensics.cli import build_parser
from vmforensics.demo.vm import build_demo_vm

#: The placeholder paths the help texts use, and what each stands for here.
DATASTORE = "/vmfs/volumes/ds1"
CASES = "/cases/2026-117"


def help_examples(parser: argparse.ArgumentParser) -> Iterator[str]:
    """The example command lines of a parser's epilog and of all its sub-commands', in order."""
    epilog = parser.epilog or ""
    block = re.search(r"examples:\n((?:  .+\n?)+)", epilog)
    if block:
        yield from (line.strip() for line in block.group(1).splitlines())
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from help_examples(child)


def test_every_help_example_runs_as_written(tmp_path: Path) -> None:
    examples = list(help_examples(build_parser()))
    assert len(examples) >= 6
    datastore = tmp_path / "ds1"
    build_demo_vm(datastore)
    cases = tmp_path / "cases"
    cases.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "VMFORENSICS_CONFIG": str(tmp_path / "no-config.toml"), "TMPDIR": str(tmp_path)}
    env.pop("VMFORENSICS_CASE", None)
    for example in examples:
        command = example.replace(DATASTORE, str(datastore)).replace(CASES, str(cases))
        argv = shlex.split(command.split(" > ")[0])
        assert argv[0] == "vmforensics", example
        done = subprocess.run(
            [sys.executable, "-m", "vmforensics", *argv[1:]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"`{example}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
