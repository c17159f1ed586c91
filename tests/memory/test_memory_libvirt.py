"""libvirt save files from a real libvirtd + QEMU (TCG) guest, raw and compressed (qemu.conf's
``save_image_format``), against ``virsh dump --memory-only --format=elf`` of the same paused
guest: every page of the conversion equals the dump's; Volatility finds the planted banner.

All libvirt cases live in this one module: it shares one system libvirtd (restarted per
compression, since qemu.conf is read at start) and must not run beside another libvirt module.
"""

from __future__ import annotations

import re
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acquire.libvirt_lab import QEMU_CONF, LibvirtLab, available, virsh
from tests.memory.qemu_guest import BANNER, BANNER_ADDRESS, bios_shadowed, wait_until
from tests.memory.volatility import banners, layer, segments
from vmforensics.memory import GuestMemory, convert, open_memory
from vmforensics.memory.libvirt_save import FORMATS, HEADER, read_header

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")
PAGE = 4096
#: What Debian 12's libvirt 9.0 writes (lzop through the lzop program; zstd came in a later libvirt).
COMPRESSIONS = ("raw", "gzip", "bzip2", "xz", "lzop")


def set_save_format(value: str | None) -> None:
    text = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
    lines = [line for line in text.splitlines() if not re.match(r"\s*save_image_format\s*=", line)]
    if value is not None:
        lines.append(f'save_image_format = "{value}"')
    QEMU_CONF.write_text("\n".join(lines) + "\n")


def domain_xml(name: str, banner: Path) -> str:
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
  <qemu:commandline>
    <qemu:arg value='-device'/>
    <qemu:arg value='loader,file={banner},addr={BANNER_ADDRESS:#x},force-raw=on'/>
  </qemu:commandline>
</domain>
"""


@pytest.fixture(scope="module")
def saves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, Path]]]:
    """compression -> (save file, ELF dump of the same paused guest)."""
    work = tmp_path_factory.mktemp("libvirt-memory")
    banner = work / "banner.bin"
    banner.write_bytes(BANNER + b"\0")
    made: dict[str, tuple[Path, Path]] = {}
    try:
        for compression in COMPRESSIONS:
            set_save_format(compression)
            with LibvirtLab(work) as lab:
                name = f"vmf-mem-{compression}"
                lab.define(name, domain_xml(name, banner))
                wait_until(
                    lambda name=name: bios_shadowed(
                        virsh("qemu-monitor-command", name, "--hmp", "info mtree -f")
                    ),
                    "SeaBIOS to shadow itself into RAM",
                )
                virsh("suspend", name)
                dump, save = work / f"{compression}.elf", work / f"{compression}.save"
                virsh("dump", name, str(dump), "--memory-only", "--format", "elf")
                virsh("save", name, str(save))
                made[compression] = (save, dump)
        yield made
    finally:
        set_save_format(None)


def same_pages(ours, dump) -> int:
    """Every page of the dump's segments through ``ours`` (a GuestMemory or a Volatility layer)."""
    pages = 0
    for start, length in segments(dump):
        for address in range(start, start + length, 1 << 20):
            step = min(1 << 20, start + length - address)
            mine = (
                ours.read(address, step)
                if isinstance(ours, GuestMemory)
                else ours.read(address, step, pad=True)
            )
            assert mine == dump.read(address, step, pad=True), hex(address)
            pages += step // PAGE
    return pages


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_page_of_the_save_equals_virsh_dump(saves, compression: str) -> None:
    save, dump = saves[compression]
    with open(save, "rb") as handle:  # the daemon really used qemu.conf's save_image_format
        assert read_header(handle.fileno(), save)["compression"] == compression
    elf = layer(dump, "elf")
    with open_memory(save) as ours:
        assert list(ours.ranges()) == segments(elf)
        assert same_pages(ours, elf) == (64 << 20) // PAGE + 64
        assert ours.read(BANNER_ADDRESS, len(BANNER)) == BANNER
        info = ours.info()
    assert info.format == "libvirt" and info.details["compression"] == compression
    assert info.details["domain"] == f"vmf-mem-{compression}"
    assert info.cpu_count == 1
    assert info.details["machine"].startswith("pc-i440fx-")


def test_converted_images_of_a_gzip_save_give_volatility_the_dumps_banner(saves, tmp_path: Path) -> None:
    save, dump = saves["gzip"]
    with open_memory(save) as ours:
        convert(ours, tmp_path / "guest.elf", "elf", progress=False)
        convert(ours, tmp_path / "guest.lime", "lime", progress=False)
    assert same_pages(layer(tmp_path / "guest.lime", "lime"), layer(dump, "elf")) == (64 << 20) // PAGE + 64
    found = banners(tmp_path / "guest.elf")
    assert (BANNER_ADDRESS, BANNER.decode().strip()) in [(o, b.strip()) for o, b in found]
    assert found == banners(dump)


def test_the_spool_of_a_compressed_save_is_removed_on_close(saves, tmp_path: Path) -> None:
    save, _ = saves["xz"]
    spool = tmp_path / "spool"
    spool.mkdir()
    with open_memory(save, spool_dir=spool) as ours:
        assert ours.read(BANNER_ADDRESS, len(BANNER)) == BANNER
    assert list(spool.iterdir()) == []


def test_a_zstd_save_reads_as_the_same_guest(saves, tmp_path: Path) -> None:
    """libvirt 9.0 here cannot write zstd saves (later libvirt runs ``zstd -c`` for them), so the
    real raw save is made into one the way it would: its header's format set to 5 and its stream
    compressed by the zstd program. The gap: the header of a libvirt that writes zstd itself."""
    raw_save, dump = saves["raw"]
    with open(raw_save, "rb") as handle:
        stream_offset = read_header(handle.fileno(), raw_save)["stream_offset"]
    data = raw_save.read_bytes()
    order = "<" if struct.unpack_from("<I", data, 16)[0] in (1, 2) else ">"
    header = bytearray(data[:stream_offset])
    struct.pack_into(order + "I", header, 28, next(k for k, v in FORMATS.items() if v == "zstd"))
    assert HEADER.size == 92
    compressed = subprocess.run(
        ["zstd", "-c", "-q"], input=data[stream_offset:], capture_output=True, check=True
    )
    save = tmp_path / "zstd.save"
    save.write_bytes(bytes(header) + compressed.stdout)
    elf = layer(dump, "elf")
    with open_memory(save) as ours:
        assert ours.info().details["compression"] == "zstd"
        assert same_pages(ours, elf) == (64 << 20) // PAGE + 64
        assert ours.read(BANNER_ADDRESS, len(BANNER)) == BANNER
