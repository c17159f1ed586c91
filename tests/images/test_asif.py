"""Apple ASIF reader on images built from the public description (dissect.hypervisor's reversing
of diskimagescontroller) and read by dissect.hypervisor as a second reader. No real macOS 26
sample is reachable here; docs/formats.md says what that leaves unproven."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from dissect.hypervisor.disk.asif import ASIF

from tests.images.asif_builders import build_asif
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image

MiB = 1 << 20


def dissect_read(image: Path, chunk: int) -> tuple[bytes, dict]:
    with image.open("rb") as fh:
        asif = ASIF(fh)
        stream = asif.open()
        out = bytearray()
        for offset in range(0, stream.size, chunk):
            stream.seek(offset)
            out += stream.read(min(chunk, stream.size - offset))
        return bytes(out), asif.metadata


def mixed_chunks(count: int, chunk: int, seed: int) -> dict[int, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(count):
        pick = rng.random()
        if pick < 0.4:
            out[i] = rng.randbytes(chunk)
        elif pick < 0.6:
            out[i] = (b"compressible text " * (chunk // 18 + 1))[:chunk]
        elif pick < 0.7:
            out[i] = rng.randbytes(1000)  # the rest of the chunk is zeros
    return out


def expected(size: int, chunk: int, chunks: dict[int, bytes]) -> bytes:
    out = bytearray(size)
    for i, payload in chunks.items():
        out[i * chunk : (i + 1) * chunk] = payload.ljust(chunk, b"\0")
    return bytes(out[:size])


METADATA = {"internal metadata": {"stable uuid": "1b0c3d2e-aaaa-4bbb-8ccc-000000000001"}, "user metadata": {}}


def test_asif_reads_its_current_directory_like_dissect(tmp_path: Path) -> None:
    image = tmp_path / "disk.asif"
    chunks = mixed_chunks(24, MiB, seed=61)
    stale = {i: b"\xde\xad" * (MiB // 2) for i in range(24)}  # the older directory maps other bytes
    guid = build_asif(image, 24 * MiB, chunks, stale=stale, metadata=METADATA)
    want = expected(24 * MiB, MiB, chunks)
    got, metadata = dissect_read(image, MiB)
    assert got == want and metadata == METADATA  # the fixture is what a second reader reads
    with open_image(image) as disk:
        info = disk.info()
        assert (info.format, info.subtype, info.warnings) == ("asif", "asif", ())
        assert info.identifiers == {"guid": str(guid), "stable_uuid": "1b0c3d2e-aaaa-4bbb-8ccc-000000000001"}
        assert info.details["directory_version"] == 2
        assert disk.read(disk.size) == want
        rng = random.Random(62)
        for _ in range(200):
            offset = rng.randrange(disk.size)
            length = rng.choice([1, 511, 4096, MiB + 3, 5 * MiB])
            assert disk.read_at(offset, length) == want[offset : offset + length]
        assert list(disk.extents()) == stored_ranges(chunks, MiB)


def stored_ranges(chunks: dict[int, bytes], chunk: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for i in sorted(chunks):
        if ranges and ranges[-1][0] + ranges[-1][1] == i * chunk:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + chunk)
        else:
            ranges.append((i * chunk, chunk))
    return ranges


def test_asif_with_small_chunks_spans_several_tables_like_dissect(tmp_path: Path) -> None:
    chunk = 32 << 10  # tables of 2048 data chunks: 64 MiB each
    image = tmp_path / "small.asif"
    size = 200 * MiB + 4096
    rng = random.Random(63)
    chunks = {i: rng.randbytes(chunk) for i in rng.sample(range(size // chunk + 1), 300)}
    chunks |= {2047: b"\x01" * chunk, 2048: b"\x02" * chunk, 4095: b"\x03" * chunk, 4096: b"\x04" * chunk}
    build_asif(image, size, chunks, chunk_size=chunk, max_size=1 << 30)
    want = expected(size, chunk, chunks)
    assert dissect_read(image, chunk)[0] == want
    with open_image(image) as disk:
        assert disk.read(disk.size) == want
        assert disk.read_at(64 * MiB - 10, 20) == b"\x01" * 10 + b"\x02" * 10  # across a table boundary


def patched(image: Path, offset: int, fmt: str, value: int) -> Path:
    blob = bytearray(image.read_bytes())
    struct.pack_into(fmt, blob, offset, value)
    image.write_bytes(bytes(blob))
    return image


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (68, ">H", 300, "block size"),
        (64, ">I", 3 << 20, "chunk size"),
        (64, ">I", 4096, "too small for ASIF tables"),
        (48, ">Q", 1 << 60, "exceeds the maximum"),
        (56, ">Q", 1 << 62, "ASIF directory of .* runs past the end"),  # 2**31 tables: never read
    ],
)
def test_asif_damaged_header_is_refused(
    tmp_path: Path, offset: int, fmt: str, value: int, reason: str
) -> None:
    image = tmp_path / "bad.asif"
    build_asif(image, 4 * MiB, {0: b"x"})
    patched(image, offset, fmt, value)
    with pytest.raises(ImageFormatError, match=reason):
        open_image(image)


def test_asif_damaged_metadata_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    image = tmp_path / "meta.asif"
    build_asif(image, 4 * MiB, {0: b"data"}, metadata=METADATA)
    blob = bytearray(image.read_bytes())
    at = blob.index(b"meta\x00\x00\x00\x01")
    blob[at + 512 : at + 520] = b"garbage!"
    image.write_bytes(bytes(blob))
    with open_image(image) as disk:
        assert any("metadata property list unreadable" in w for w in disk.info().warnings)
        assert disk.read_at(0, 4) == b"data"
