"""Additions to a sealed evidence directory: new files and ledger events after the seal.

A sealed directory is never changed, but some custody facts only exist after the seal: an RFC 3161
timestamp over the manifest's bytes, or an artifact derived from the evidence (a memory image, an
E01 export). They are *added*: each new file is created exclusively, each fact is a ledger event
chained after the signed head, and everything is made read-only again. ``verify`` checks the signed
prefix of the ledger against the manifest and hands every later event to the checker registered for
its action in :data:`POST_SEAL_CHECKERS`; an event with no checker fails verification.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from vmforensics.custody.evidence import safe_relative_path
from vmforensics.custody.ledger import LEDGER_NAME, CustodyEvent, Ledger
from vmforensics.custody.models import ExaminerHost, Manifest
from vmforensics.errors import EvidenceError

#: Ledger action -> "module:function" checking one such event after the seal. The function is
#: ``fn(root, event, manifest, options) -> PostSealCheck``; ``options`` are verify()'s keywords.
POST_SEAL_CHECKERS: dict[str, str] = {
    "timestamp": "vmforensics.custody.timestamps:check_event",
    "timestamp-failed": "vmforensics.custody.timestamps:check_event",
    "derived": "vmforensics.custody.derived:check_event",
}


@attrs.frozen
class PostSealCheck:
    """The verdict on one event recorded after the seal."""

    action: str
    status: str  # OK, FAILED, UNCHECKED (e.g. no trust anchor was given to check it against)
    summary: str
    files: tuple[str, ...] = ()  # paths relative to the evidence directory this event vouches for
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status != "FAILED"


Checker = Callable[[Path, CustodyEvent, Manifest, Mapping[str, Any]], PostSealCheck]


def checker_for(action: str) -> Checker | None:
    """The registered checker of a post-seal action, or None when the action is unknown."""
    target = POST_SEAL_CHECKERS.get(action)
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Amendment:
    """Adds files and ledger events to a sealed directory (see :func:`amend_sealed`)."""

    def __init__(self, root: Path, ledger: Ledger):
        self.root = root
        self.ledger = ledger
        self.created: list[Path] = []  # new files, and the directories opened for them (resealed on exit)

    def create(self, relative: str) -> BinaryIO:
        """A new file under the evidence directory, created exclusively (parents made as needed)."""
        safe_relative_path(relative)
        path = self.root / relative
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            directory = self.root / parent
            if directory.is_symlink():
                raise EvidenceError(f"{directory} is a symbolic link; nothing is written through it")
            if not directory.exists():
                directory.mkdir(mode=0o755)
                self.created.append(directory)
            else:
                _make_writable(directory)
                self.created.append(directory)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError as exc:
            raise EvidenceError(f"{path} already exists; evidence is never overwritten") from exc
        self.created.append(path)
        return os.fdopen(fd, "wb")

    def append(self, action: str, /, **details: Any) -> CustodyEvent:
        """A ledger event after the seal; ``action`` must have a checker in POST_SEAL_CHECKERS."""
        if action not in POST_SEAL_CHECKERS:
            raise EvidenceError(f"{action!r} is not an action that may follow the seal")
        return self.ledger.append(action, **details)


@contextlib.contextmanager
def amend_sealed(root: str | os.PathLike[str]) -> Iterator[Amendment]:
    """Reopen a sealed evidence directory for additions only; read-only again on exit.

    The ledger's chain is checked before anything is added. Files written inside the block are
    fsynced and lose their write bits on exit, as do the directories that held them.
    """
    from vmforensics.custody.seal import MANIFEST_NAME

    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        raise EvidenceError(f"{root} is not sealed (no {MANIFEST_NAME}); nothing can be added after a seal")
    host = ExaminerHost.current()
    ledger_path = root / LEDGER_NAME
    touched = [root, ledger_path]
    for path in touched:
        _make_writable(path)
    amendment: Amendment | None = None
    try:
        amendment = Amendment(root, Ledger.reopen(ledger_path, {"host": host.hostname, "user": host.user}))
        yield amendment
    finally:
        for path in reversed([*(amendment.created if amendment else ()), *touched]):
            _seal_path(path)


def _make_writable(path: Path) -> None:
    path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o200)


def _seal_path(path: Path) -> None:
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        path.chmod(0o555)
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
