"""Derived artifacts: files computed from sealed evidence (a memory image converted from a saved
state, an E01 export), added after the seal without changing the signed manifest.

A derivation of kind K runs the producer registered in :data:`PRODUCERS` over input files that
the manifest lists, writing into ``derived/`` through :func:`~vmforensics.custody.postseal.amend_sealed`.
One ledger event "derived" records the output's SHA-256 and size, every input with its SHA-256
from the manifest, the tool and its version, and the exact conversion (the producer's parameters
and what it reported). :func:`check_event` (registered for "derived" in POST_SEAL_CHECKERS)
runs the producer again into a hashing sink, without writing, and compares byte for byte.

A producer is ``fn(inputs: Sequence[Path], params: Mapping[str, Any], sink: Sink) -> dict``:
it writes the artifact sequentially into ``sink`` and returns facts worth recording. It must be
deterministic: the same inputs and parameters give the same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody.ledger import CustodyEvent
from vmforensics.custody.models import Manifest
from vmforensics.custody.postseal import PostSealCheck, amend_sealed
from vmforensics.errors import EvidenceError, VMForensicsError

log = logging.getLogger(__name__)

ACTION = "derived"
DERIVED_DIR = "derived"
#: Derivation kind -> "module:function" producing it.
PRODUCERS: dict[str, str] = {
    "memory-image": "vmforensics.memory.derive:produce",
    "e01": "vmforensics.custody.ewf:produce",
}
_ZEROS = bytes(1 << 20)


class _Hasher:
    """SHA-256 in a thread of its own, fed in order, so that hashing (which releases the GIL)
    overlaps the reads and writes of the thread producing the bytes. Small pieces are handed over
    in batches of about 1 MiB; at most a few batches wait, so memory stays bounded."""

    BATCH = 1 << 20

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self._queue: queue.Queue[list[bytes | memoryview | int] | None] = queue.Queue(maxsize=8)
        self._batch: list[bytes | memoryview | int] = []
        self._batched = 0
        self._thread = threading.Thread(
            target=_hash_batches, args=(self._queue, self.hash), name="vmforensics-sha256", daemon=True
        )
        self._thread.start()
        weakref.finalize(self, self._queue.put, None)  # an abandoned sink's thread ends too

    def _add(self, item: bytes | memoryview | int, length: int) -> None:
        self._batch.append(item)
        self._batched += length
        if self._batched >= self.BATCH:
            self._queue.put(self._batch)
            self._batch, self._batched = [], 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        immutable = isinstance(data, bytes) or (view.readonly and isinstance(view.obj, bytes))
        self._add(data if immutable else bytes(data), len(view))  # a reused buffer is copied

    def zeros(self, length: int) -> None:
        self._add(length, length)

    def hexdigest(self) -> str:
        if self._thread.is_alive():
            self._queue.put(self._batch)
            self._queue.put(None)
            self._thread.join()
        return self.hash.hexdigest()


def _hash_batches(batches: queue.Queue[list[bytes | memoryview | int] | None], digest: Any) -> None:
    while (batch := batches.get()) is not None:
        for item in batch:
            if isinstance(item, int):
                _hash_zeros(digest, item)
            else:
                digest.update(item)


class Sink:
    """Sequential output that hashes what it is given; a hole is hashed as zeros and, in a file,
    seeked over (sparse). Without ``fd`` nothing is written: that is how a checker re-derives."""

    def __init__(self, fd: int | None = None):
        self.fd, self.position, self._hasher = fd, 0, _Hasher()

    def write(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        if self.fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        self.position += len(data)

    def hole(self, length: int) -> None:
        if length < 0:
            raise ValueError("a sink only moves forward")
        self._hasher.zeros(length)
        if self.fd is not None and length:
            os.lseek(self.fd, length, os.SEEK_CUR)
        self.position += length

    def finish(self) -> None:
        """Give the file its full length (a trailing hole) and flush it to disk."""
        if self.fd is not None:
            os.ftruncate(self.fd, self.position)
            os.fsync(self.fd)

    @property
    def sha256(self) -> str:
        """The SHA-256 of everything given (no more may be given after it is read)."""
        return self._hasher.hexdigest()


Producer = Callable[[Sequence[Path], Mapping[str, Any], Sink], dict[str, Any]]


def producer_for(kind: str) -> Producer:
    target = PRODUCERS.get(kind)
    if target is None:
        raise EvidenceError(f"no producer is registered for derived artifacts of kind {kind!r}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@attrs.frozen
class DerivedResult:
    """One derivation after the seal: its output (None when it failed) and the ledger event."""

    kind: str
    output: str | None
    sha256: str | None
    error: str | None
    event: CustodyEvent

    @property
    def ok(self) -> bool:
        return self.error is None


def _tool() -> dict[str, str]:
    from vmforensics import __version__

    return {"name": "vmforensics", "version": __version__}


def _inputs(manifest: Manifest, inputs: Sequence[str]) -> list[dict[str, str]]:
    listed = {f.local_path: f for f in manifest.files}
    recorded = []
    for path in inputs:
        entry = listed.get(path)
        if entry is None or "sha256" not in entry.hashes:
            raise EvidenceError(
                f"{path} is not a sealed evidence file with a SHA-256; nothing is derived from it"
            )
        recorded.append({"path": path, "sha256": entry.hashes["sha256"]})
    return recorded


def derive(
    root: str | os.PathLike[str],
    manifest: Manifest,
    kind: str,
    inputs: Sequence[str],
    params: Mapping[str, Any],
    output: str,
) -> DerivedResult:
    """Produce ``derived/<output>`` of ``kind`` from the sealed ``inputs`` (local paths in the
    manifest). A failure is recorded in the ledger (status "failed") and returned, never raised
    once the directory is open: the sealed acquisition is never lost."""
    root = Path(root)
    recorded = _inputs(manifest, inputs)
    relative = f"{DERIVED_DIR}/{output}"
    details: dict[str, Any] = {"kind": kind, "inputs": recorded, "tool": _tool(), "conversion": dict(params)}
    produce = producer_for(kind)
    with amend_sealed(root) as amendment:
        try:
            with amendment.create(relative) as handle:
                sink = Sink(handle.fileno())
                facts = produce([root / path for path in inputs], params, sink)
                sink.finish()
        except Exception as exc:  # any failure is recorded: the sealed acquisition is never lost
            error = f"{type(exc).__name__}: {exc}"
            log.warning("derived %s from %s failed: %s", kind, ", ".join(inputs), error)
            _discard(root / relative, amendment.created)
            event = amendment.append(ACTION, status="failed", error=error, **details)
            return DerivedResult(kind, None, None, error, event)
        event = amendment.append(
            ACTION,
            status="ok",
            output=relative,
            sha256=sink.sha256,
            size=sink.position,
            facts=facts,
            **details,
        )
    log.info("derived %s (%s, sha256 %s)", relative, kind, sink.sha256)
    return DerivedResult(kind, relative, sink.sha256, None, event)


def _discard(path: Path, created: list[Path]) -> None:
    """A partial output of a failed derivation is removed (it was created by this amendment)."""
    if path in created:
        created.remove(path)
        path.unlink(missing_ok=True)


def check_event(
    root: Path, event: CustodyEvent, manifest: Manifest, options: Mapping[str, Any]
) -> PostSealCheck:
    """Re-derive a "derived" event's artifact into a hashing sink and compare (POST_SEAL_CHECKERS)."""
    details = event.details
    kind = str(details.get("kind", "?"))
    if details.get("status") == "failed":
        return PostSealCheck(ACTION, "OK", f"{kind} was not derived: {details.get('error')}")
    output = details.get("output")
    if not isinstance(output, str) or not output.startswith(f"{DERIVED_DIR}/"):
        return PostSealCheck(ACTION, "FAILED", f"event {event.seq} names no derived file ({output!r})")
    problems = []
    inputs = details.get("inputs") or []
    try:
        if [i.get("sha256") for i in inputs] != [
            i["sha256"] for i in _inputs(manifest, [i.get("path") for i in inputs])
        ]:
            problems.append("the inputs' SHA-256 in the event differ from the manifest's")
        # The file on disk is hashed beside the re-derivation (hashlib releases the GIL): two cores.
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashing = pool.submit(_file_sha256, root / output)
            sink = Sink()
            producer_for(kind)([root / i["path"] for i in inputs], details.get("conversion") or {}, sink)
            on_disk = hashing.result()
        if on_disk != details.get("sha256"):
            problems.append(f"{output} is not the file the ledger recorded (SHA-256 {on_disk})")
        if (sink.sha256, sink.position) != (details.get("sha256"), details.get("size")):
            problems.append(
                f"re-deriving from the inputs gives SHA-256 {sink.sha256} ({sink.position} bytes), "
                f"not the recorded {details.get('sha256')} ({details.get('size')} bytes)"
            )
    except (VMForensicsError, OSError, TypeError, KeyError, AttributeError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    tool = details.get("tool") or {}
    said = f"{output} ({kind}, {tool.get('name')} {tool.get('version')}) from {', '.join(str(i.get('path')) for i in inputs)}"
    if problems:
        return PostSealCheck(ACTION, "FAILED", said, (output,), tuple(problems))
    return PostSealCheck(ACTION, "OK", f"{said}: re-derived byte for byte", (output,))


def _file_sha256(path: Path) -> str:
    """SHA-256 of the file; its holes (a raw memory image is mostly hole) are hashed as zeros
    without being read (SEEK_DATA/SEEK_HOLE; a file system without them reports all data)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size, position = os.fstat(fd).st_size, 0
        while position < size:
            data = _next_data(fd, position, size)
            _hash_zeros(digest, data - position)
            end = os.lseek(fd, data, os.SEEK_HOLE) if data < size else size
            while data < end:
                chunk = os.pread(fd, min(len(_ZEROS), end - data), data)
                if not chunk:
                    raise EvidenceError(f"{path} ends early while it is hashed")
                digest.update(chunk)
                data += len(chunk)
            position = end
    finally:
        os.close(fd)
    return digest.hexdigest()


def _next_data(fd: int, position: int, size: int) -> int:
    try:
        return os.lseek(fd, position, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole from here to the end
            return size
        raise


def _hash_zeros(digest: Any, length: int) -> None:
    zeros = memoryview(_ZEROS)
    while length > 0:
        step = min(length, len(zeros))
        digest.update(zeros[:step])
        length -= step
