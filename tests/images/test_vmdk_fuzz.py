"""Mutated VMDKs: only ImageFormatError may escape open_image(), read() and info(), quickly.

Seeds are small real images (qemu-img) and spec-built COWD/SESparse extents; hypothesis flips
bytes in headers, descriptors, grain directories/tables and stream markers, sets header fields
to extreme values, and truncates files. Files are served from memory through the opener, so the
seeds on disk are never modified.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.images.conftest import qemu_img, qemu_io
from tests.images.vmdk_builders import (
    build_cowd,
    build_sesparse,
    move_grain_directory_to_footer,
    write_descriptor,
)
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image

#: VMDK_FUZZ_EXAMPLES=5000 runs a long, randomised campaign; the default is quick and repeatable.
_LONG_RUN = int(os.environ.get("VMDK_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_LONG_RUN or 40,
    deadline=3000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=not _LONG_RUN,
)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    """name -> the file to mutate; every file of each image sits in one directory."""
    root = tmp_path_factory.mktemp("vmdk-seeds")
    out: dict[str, Path] = {}
    sparse = root / "sparse.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "zeroed_grain=on", sparse, "2M")
    qemu_io(sparse, "write -P 0x41 0 64k", "write -P 0x42 1M 100k", "write -z 512k 64k", fmt="vmdk")
    out["sparse"] = sparse
    raw = root / "src.raw"
    raw.write_bytes(bytes(range(256)) * 4096)
    stream = root / "stream.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, stream)
    move_grain_directory_to_footer(stream)
    out["stream"] = stream
    split = root / "split.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", split, "1M")
    qemu_io(split, "write -P 0x43 0 128k", fmt="vmdk")
    out["descriptor"] = split
    out["extent"] = root / "split-s001.vmdk"
    build_cowd(root / "c-delta.vmdk", 2 << 20, 8, {0: b"C" * 4096, 100: b"D" * 4096})
    out["cowd"] = root / "c-delta.vmdk"
    build_sesparse(root / "s-sesparse.vmdk", 2 << 20, {0: b"S" * 4096, 3: b"T" * 4096}, zero={5})
    out["sesparse-descriptor"] = write_descriptor(
        root / "s.vmdk", ['RW 4096 SESPARSE "s-sesparse.vmdk"'], create_type="seSparse"
    )
    out["sesparse"] = root / "s-sesparse.vmdk"
    return out


# The image to open for each mutated file.
ENTRY = {
    "sparse": "sparse",
    "stream": "stream",
    "descriptor": "descriptor",
    "extent": "descriptor",
    "cowd": "cowd",
    "sesparse": "sesparse-descriptor",
    "sesparse-descriptor": "sesparse-descriptor",
}


def exercise(entry: Path, target: Path, blob: bytes) -> None:
    """Open ``entry`` with ``target`` replaced by ``blob``; read a sample; only ImageFormatError."""

    def opener(path: str):
        if Path(path) == target:
            return io.BytesIO(blob)
        return open(path, "rb")  # the image closes its sources

    try:
        with open_image(entry, opener=opener) as disk:
            disk.info()
            size = disk.size
            for offset in (0, size // 3, size // 2, max(0, size - 70000)):
                disk.read_at(offset, 256 * 1024)
    except ImageFormatError as exc:
        assert exc.reason


mutations = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=12)


@pytest.mark.parametrize("name", sorted(ENTRY))
@FUZZ
@given(flips=mutations, region=st.sampled_from([512, 4096, 1 << 20]), cut=st.none() | st.integers(0, 1 << 20))
def test_byte_mutations_raise_only_image_format_errors(seeds, name, flips, region, cut):
    original = seeds[name].read_bytes()
    blob = bytearray(original)
    for offset, value in flips:
        if blob:
            blob[offset % min(region, len(blob))] = value
    if cut is not None:
        del blob[cut % (len(blob) + 1) :]
    exercise(seeds[ENTRY[name]], seeds[name], bytes(blob))


EXTREMES = [0, 1, 2, 0x7F, 0x200, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 63) - 1, (1 << 64) - 1]

# (offset, struct format) of header fields: KDMV sparse header and footer, COWD, SESparse const header.
SPARSE_FIELDS = [(4, "<I"), (8, "<I"), (12, "<Q"), (20, "<Q"), (28, "<Q"), (36, "<Q"), (44, "<I"), (48, "<Q"),
                 (56, "<Q"), (64, "<Q"), (77, "<H")]  # fmt: skip
COWD_FIELDS = [(4, "<I"), (8, "<I"), (12, "<I"), (16, "<I"), (20, "<I"), (24, "<I"), (28, "<I")]
SESPARSE_FIELDS = [(8 * i, "<Q") for i in range(1, 26)]


def set_field(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value & ((1 << (8 * struct.calcsize(fmt))) - 1))
    return bytes(out)


@FUZZ
@given(
    case=st.sampled_from(
        [
            ("sparse", 0, SPARSE_FIELDS),
            ("extent", 0, SPARSE_FIELDS),
            ("stream", -1024, SPARSE_FIELDS),
            ("cowd", 0, COWD_FIELDS),
            ("sesparse", 0, SESPARSE_FIELDS),
        ]
    ),
    pick=st.integers(0, 100),
    value=st.sampled_from(EXTREMES) | st.integers(0, (1 << 64) - 1),
)
def test_extreme_header_fields_raise_only_image_format_errors(seeds, case, pick, value):
    name, base, fields = case
    blob = seeds[name].read_bytes()
    offset, fmt = fields[pick % len(fields)]
    at = offset if base == 0 else len(blob) + base + offset
    exercise(seeds[ENTRY[name]], seeds[name], set_field(blob, at, fmt, value))


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 2000), st.sampled_from(["", "0", '"', "\n", "RW 99999999999 SPARSE", "=", "\0", "ZERO",
                                                         " 18446744073709551615", '"../../etc/passwd"', "\xff"])),
        min_size=1,
        max_size=6,
    )
)  # fmt: skip
def test_descriptor_text_edits_raise_only_image_format_errors(seeds, edits):
    text = seeds["descriptor"].read_text()
    for position, insert in edits:
        position %= len(text) + 1
        text = text[:position] + insert + text[position + 1 :]
    exercise(seeds["descriptor"], seeds["descriptor"], text.encode("utf-8", "surrogatepass"))
