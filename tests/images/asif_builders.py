"""Apple ASIF images laid out as dissect.hypervisor describes them (no real sample is reachable
here: no macOS 26 machine, no network), so that both readers can be compared on them."""

from __future__ import annotations

import plistlib
import uuid
from collections.abc import Mapping
from pathlib import Path

from vmforensics.images import asif_layout as a

PiB = 1 << 50


def build_asif(
    path: Path,
    size: int,
    chunks: Mapping[int, bytes],
    *,
    chunk_size: int = 1 << 20,
    block_size: int = 512,
    max_size: int = 4 * PiB,
    stale: dict[int, bytes] | None = None,
    metadata: dict | None = None,
    guid: uuid.UUID | None = None,
) -> uuid.UUID:
    """Guest chunk ``i`` holds ``chunks[i]``; the other directory (version 1, not current) maps
    ``stale`` instead. With ``metadata``, a 'meta' chunk at the last chunk of the maximum size."""
    guid = guid or uuid.uuid4()
    g = a.Geometry.of(chunk_size, block_size, max_size)
    next_chunk = 3  # 0: header, 1 and 2: the directories
    metadata_chunk = max_size // chunk_size - 1 if metadata is not None else 0
    f = path.open("wb")

    def allocate(payload: bytes) -> int:
        """Write one chunk at the next free place (streamed: no image is held in memory)."""
        nonlocal next_chunk
        f.seek(next_chunk * chunk_size)
        f.write(payload)
        next_chunk += 1
        return next_chunk - 1

    def directory(mapping: Mapping[int, bytes], version: int, with_meta: bool) -> bytes:
        tables: dict[int, list[int]] = {}
        for guest in sorted(mapping):
            table_index, within = divmod(guest * chunk_size, g.bytes_per_table)
            entries = tables.setdefault(table_index, [0] * g.table_entries)
            entries[g.data_index(within // chunk_size)] = allocate(mapping[guest].ljust(chunk_size, b"\0"))
        if with_meta:
            body = plistlib.dumps(metadata)
            meta = a.META_HEADER.pack(a.META_MAGIC, 1, 512, len(body), 0).ljust(512, b"\0") + body
            table_index, within = divmod(metadata_chunk * chunk_size, g.bytes_per_table)
            entries = tables.setdefault(table_index, [0] * g.table_entries)
            entries[g.data_index(within // chunk_size)] = (
                allocate(meta.ljust(chunk_size, b"\0")) | a.ENTRY_DIRTY
            )
        slots = [0] * g.directory_entries
        for table_index, entries in tables.items():
            slots[table_index] = allocate(b"".join(e.to_bytes(8, "big") for e in entries))
        return version.to_bytes(8, "big") + b"".join(s.to_bytes(8, "big") for s in slots)

    with f:
        current = directory(chunks, 2, metadata is not None)
        old = directory(stale or {}, 1, False)
        header = a.HEADER.pack(
            a.MAGIC, 1, 512, 0, 2 * chunk_size, 1 * chunk_size, guid.bytes, size // block_size,
            max_size // block_size, chunk_size, block_size, 1, metadata_chunk, bytes(16), 0, 0, 0,
        )  # fmt: skip
        f.seek(0)
        f.write(header)
        f.seek(chunk_size)
        f.write(old)
        f.seek(2 * chunk_size)
        f.write(current)
        f.truncate(next_chunk * chunk_size)
    return guid
