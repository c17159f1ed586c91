"""Guest memory out as a raw image, an ELF64 core or a LiME file, streamed in bounded pieces.

- raw: byte ``n`` of the file is guest-physical address ``n``; zero pages and addresses that were
  never memory (the PCI hole) are holes (the file is sparse where the file system allows).
- elf: one PT_LOAD per stretch of non-zero memory (``p_paddr`` = ``p_vaddr`` = guest-physical),
  program headers first, data from the next page boundary.
- lime: one LiME header per stretch of non-zero memory, followed by its bytes.

Zero stretches shorter than :func:`min_gap` stay inside a segment, so an ELF never needs more
than ~32768 program headers (Volatility reads e_phnum as 16 bits). ELF and LiME first scan the
memory for zero pages (a plan), then write; raw needs one pass. The same code writes to a file
or only hashes (:func:`digest`), which is how a derived artifact is re-derived byte for byte.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import attrs

from vmforensics.custody.derived import Sink
from vmforensics.errors import EvidenceError, MemoryFormatError, UsageError
from vmforensics.memory import elf_layout as efmt
from vmforensics.memory import lime
from vmforensics.memory.base import CHUNK, PAGE, GuestMemory
from vmforensics.progress import Progress, ProgressOption

log = logging.getLogger(__name__)

FORMATS = ("raw", "elf", "lime")
ZERO_CHUNK = bytes(CHUNK)
ZERO_PAGE = bytes(PAGE)
MAX_SEGMENTS = 32768

Advance = Callable[[int], None]


@attrs.frozen
class Conversion:
    """What a conversion wrote: the output format, its size and SHA-256, the non-zero bytes and
    the number of segments (ELF PT_LOADs / LiME ranges; raw: stretches of data)."""

    format: str
    size: int
    sha256: str
    stored: int
    segments: int


def min_gap(memory: GuestMemory) -> int:
    """Zero stretches at least this long split ELF/LiME segments."""
    return max(PAGE, -(-memory.size // MAX_SEGMENTS) // PAGE * PAGE)


def _nonzero(data: bytes, address: int) -> Iterator[tuple[int, int, int]]:
    """(address, index, length) of the non-zero page runs in ``data`` (pages counted from ``address``)."""
    if (data == ZERO_CHUNK) if len(data) == CHUNK else data.count(0) == len(data):
        return
    start = None
    for index in range(0, len(data), PAGE):
        if index + PAGE <= len(data):
            zero = data.startswith(ZERO_PAGE, index)  # a memcmp in place, no slice
        else:
            zero = data.count(0, index) == len(data) - index
        if zero and start is not None:
            yield address + start, start, index - start
            start = None
        elif not zero and start is None:
            start = index
    if start is not None:
        yield address + start, start, len(data) - start


def plan(memory: GuestMemory, progress: Advance | None = None) -> list[tuple[int, int]]:
    """(guest-physical start, length) of the segments an ELF or LiME output holds, ascending."""
    gap = min_gap(memory)
    ranges = memory.info().ranges
    segments: list[list[int]] = []  # [start, end, range index]
    for address, data in memory.chunks():
        for start, _index, length in _nonzero(data, address):
            where = next(n for n, r in enumerate(ranges) if r.start <= start < r.end)
            if segments and segments[-1][2] == where and start - segments[-1][1] < gap:
                segments[-1][1] = start + length
            else:
                segments.append([start, start + length, where])
        if progress is not None:
            progress(len(data))
    return [(start, end - start) for start, end, _ in segments]


def max_raw_size(memory: GuestMemory) -> int:
    """A raw image may be mostly hole (the PCI hole, a BIOS just below 4 GiB), but not absurdly:
    a state claiming RAM at 16 TiB for a small guest is refused rather than hashed for hours."""
    return max(2 * memory.info().memory_size, 4 << 30) + (4 << 30)


def _raw(memory: GuestMemory, sink: Sink, progress: Advance | None) -> tuple[int, int]:
    if memory.size > max_raw_size(memory):
        raise MemoryFormatError(
            f"a raw image would be {memory.size} bytes for {memory.info().memory_size} bytes of memory "
            "(the highest range lies far above the rest); convert to elf or lime instead",
            path=str(memory.path),
        )
    stored = stretches = 0
    for address, data in memory.chunks():
        view = memoryview(data)
        for start, index, length in _nonzero(data, address):
            sink.hole(start - sink.position)
            sink.write(view[index : index + length])
            stored += length
            stretches += 1
        if progress is not None:
            progress(len(data))
    sink.hole(memory.size - sink.position)
    return stored, stretches


def _segments_data(
    memory: GuestMemory, segments: list[tuple[int, int]], sink: Sink, progress: Advance | None, header
) -> None:
    for start, length in segments:
        if header is not None:
            sink.write(header(start, length))
        done = 0
        while done < length:
            step = min(CHUNK, length - done)
            sink.write(memory.read(start + done, step))
            done += step
            if progress is not None:
                progress(step)


def machine_of(memory: GuestMemory) -> int:
    """ELF e_machine: x86-64 only where the source says the guest is x86, else EM_NONE."""
    details = memory.info().details
    if memory.info().format == "elf":
        return int(details.get("machine", 0))
    machine = str(details.get("machine") or "")
    return efmt.EM_X86_64 if machine.startswith(("pc", "q35")) else 0


def _elf(memory: GuestMemory, sink: Sink, progress: Advance | None) -> tuple[int, int]:
    segments = plan(memory, progress)
    data_at = -(-(efmt.EHDR.size + efmt.PHDR.size * len(segments)) // PAGE) * PAGE
    header = efmt.EHDR.pack(
        efmt.ident(), efmt.ET_CORE, machine_of(memory), efmt.EV_CURRENT, 0, efmt.EHDR.size, 0, 0, efmt.EHDR.size,
        efmt.PHDR.size, len(segments), 0, 0, 0,
    )  # fmt: skip
    table, offset = [], data_at
    for start, length in segments:
        table.append(
            efmt.PHDR.pack(
                efmt.PT_LOAD, efmt.PF_R | efmt.PF_W | efmt.PF_X, offset, start, start, length, length, PAGE
            )
        )
        offset += length
    sink.write(header + b"".join(table))
    sink.write(bytes(data_at - sink.position))
    _segments_data(memory, segments, sink, progress, None)
    return sum(length for _, length in segments), len(segments)


def _lime(memory: GuestMemory, sink: Sink, progress: Advance | None) -> tuple[int, int]:
    segments = plan(memory, progress)
    _segments_data(memory, segments, sink, progress, lime.header)
    return sum(length for _, length in segments), len(segments)


_WRITERS = {"raw": _raw, "elf": _elf, "lime": _lime}


def _emit(memory: GuestMemory, format: str, sink: Sink, progress: Advance | None) -> Conversion:
    if format not in _WRITERS:
        raise UsageError(f"unknown memory image format {format!r}: use one of {', '.join(FORMATS)}")
    stored, segments = _WRITERS[format](memory, sink, progress)
    sink.finish()
    return Conversion(format, sink.position, sink.sha256, stored, segments)


def convert(
    memory: GuestMemory,
    out: str | os.PathLike[str],
    format: str = "raw",
    *,
    progress: ProgressOption = True,
) -> Conversion:
    """Write ``memory`` to a new file ``out`` (never an existing one) in ``format``.

    ``progress``: True shows tqdm bars, a callable receives ProgressUpdate, False shows nothing.
    """
    if format not in _WRITERS:
        raise UsageError(f"unknown memory image format {format!r}: use one of {', '.join(FORMATS)}")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise EvidenceError(f"{out} exists; a memory image is never written over an existing file") from None
    bar = None
    if progress:
        passes = 1 if format == "raw" else 2  # ELF and LiME scan for zero pages first
        bar = Progress(progress, total=memory.extents.stored * passes, description=f"convert to {format}")
        bar.start_file(os.fspath(out), bar.total)
    try:
        result = _emit(memory, format, Sink(fd), bar.advance if bar else None)
    except BaseException:
        os.close(fd)
        os.unlink(out)
        raise
    finally:
        if bar is not None:
            bar.close()
    os.close(fd)
    log.info("wrote %s (%s, %d bytes, sha256 %s)", out, format, result.size, result.sha256)
    return result


def write(
    memory: GuestMemory, sink: Sink, format: str = "raw", *, progress: Advance | None = None
) -> Conversion:
    """Stream the ``format`` image of ``memory`` into ``sink`` (a file, or only a hash)."""
    return _emit(memory, format, sink, progress)


def digest(memory: GuestMemory, format: str = "raw", *, progress: Advance | None = None) -> Conversion:
    """What :func:`convert` would write, hashed and measured but not written anywhere."""
    return _emit(memory, format, Sink(None), progress)
