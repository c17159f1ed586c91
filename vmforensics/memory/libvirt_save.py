"""libvirt save files (``virsh save``, managed save, the memory file of an external snapshot): a
header (libvirt's src/qemu/qemu_saveimage.h), the domain XML, then QEMU's migration stream,
raw or compressed with the program qemu.conf's ``save_image_format`` names.

Header (host byte order, 92 bytes): magic "LibvirtQemudSave" ("LibvirtQemudPart" while a save
is still being written), version, data_len (XML + cookie + padding), was_running, format
(0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd), cookieOffset, 14 unused words. The stream starts
at 92 + data_len. A compressed stream is decompressed once into a temporary spool file (deleted
on close) so that it can be read at random; its size is bounded by the guest's memory size.
"""

from __future__ import annotations

import bz2
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

from vmforensics.errors import MemoryFormatError
from vmforensics.memory import qemu_stream
from vmforensics.memory.base import CHUNK, GuestMemory

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"
HEADER = struct.Struct("16s5I14I")
FORMATS = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd"}
MAX_XML = 64 << 20
#: A decompressed stream may exceed the guest's memory by page headers and device state only.
SPOOL_SLACK = 256 << 20


def is_save(head: bytes) -> bool:
    return head[:16] in (MAGIC, PARTIAL)


def read_header(fd: int, path: Path) -> dict[str, Any]:
    raw = os.pread(fd, HEADER.size, 0)
    if len(raw) != HEADER.size:
        raise MemoryFormatError("the file ends inside the libvirt save header", offset=0, path=str(path))
    if raw[:16] == PARTIAL:
        raise MemoryFormatError(
            "this libvirt save was never completed (magic LibvirtQemudPart): the save failed or is still running",
            offset=0,
            path=str(path),
        )
    for order in "<>":
        fields = struct.unpack(order + HEADER.format, raw)
        if fields[1] in (1, 2):
            break
    else:
        version = struct.unpack_from("<I", raw, 16)[0]
        raise MemoryFormatError(
            f"libvirt save header version {version} is not supported", offset=16, path=str(path)
        )
    _magic, version, data_len, was_running, format_, cookie = fields[:6]
    size = os.fstat(fd).st_size
    if data_len > MAX_XML or HEADER.size + data_len > size:
        raise MemoryFormatError(f"XML length {data_len} does not fit the file", offset=20, path=str(path))
    if format_ not in FORMATS:
        raise MemoryFormatError(f"unknown save image format {format_}", offset=28, path=str(path))
    data = os.pread(fd, data_len, HEADER.size)
    end = cookie if version == 2 and 0 < cookie <= data_len else data_len
    xml = data[:end].split(b"\0", 1)[0].decode("utf-8", "replace")
    return {
        "version": version,
        "was_running": bool(was_running),
        "compression": FORMATS[format_],
        "stream_offset": HEADER.size + data_len,
        "xml": xml,
    }


def domain_facts(xml: str, path: Path) -> dict[str, Any]:
    """Name, UUID, machine type, vCPUs and memory from the saved domain XML (no DTDs or entities)."""
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        at = min(i for i in (xml.find("<!DOCTYPE"), xml.find("<!ENTITY")) if i >= 0)
        raise MemoryFormatError(
            "the saved domain XML has a DOCTYPE; libvirt never writes one",
            offset=HEADER.size + len(xml[:at].encode()),
            path=str(path),
        )
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise MemoryFormatError(
            f"the saved domain XML does not parse: {exc}", offset=HEADER.size, path=str(path)
        ) from None
    facts: dict[str, Any] = {"domain": root.findtext("name"), "domain_uuid": root.findtext("uuid")}
    machine = root.find("os/type")
    if machine is not None:
        facts["machine"] = machine.get("machine")
        facts["arch"] = machine.get("arch")
    vcpu = root.findtext("vcpu")
    if vcpu and vcpu.strip().isdigit():
        facts["cpu_count"] = int(vcpu)
    memory = root.find("memory")
    if memory is not None and (memory.text or "").strip().isdigit():
        unit = (memory.get("unit") or "KiB").lower()
        scale = {
            "b": 1,
            "bytes": 1,
            "k": 1024,
            "kib": 1024,
            "m": 1 << 20,
            "mib": 1 << 20,
            "g": 1 << 30,
            "gib": 1 << 30,
        }
        facts["domain_memory"] = int(memory.text.strip()) * scale.get(unit, 1024)
    return facts


def open_save(path: Path, *, spool_dir: Path | None = None) -> GuestMemory:
    fd = os.open(path, os.O_RDONLY)
    try:
        header = read_header(fd, path)
        facts = domain_facts(header["xml"], path)
        extra = {
            "format": "libvirt",
            "compression": header["compression"],
            "was_running": header["was_running"],
            "save_version": header["version"],
            **facts,
        }
        if header["compression"] == "raw":
            memory = qemu_stream.open_qevm(path, fd=fd, start=header["stream_offset"], extra=extra)
            memory.owns_fd = True
            return memory
        limit = facts.get("domain_memory", 0) * 2 + SPOOL_SLACK
        spool = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed by the GuestMemory
        try:
            _decompress(fd, header["stream_offset"], header["compression"], spool, limit, path)
            memory = qemu_stream.open_qevm(path, fd=spool.fileno(), start=0, extra=extra)
        except BaseException:
            spool.close()
            raise
        memory.cleanup = spool.close
        os.close(fd)
        return memory
    except BaseException:
        os.close(fd)
        raise


_DECOMPRESSORS = {
    "gzip": lambda: zlib.decompressobj(wbits=47),
    "bzip2": bz2.BZ2Decompressor,
    "xz": lzma.LZMADecompressor,
}
_PROGRAMS = {"lzop": ["lzop", "-dc"], "zstd": ["zstd", "-dcq"]}


def _decompress(fd: int, offset: int, kind: str, spool: Any, limit: int, path: Path) -> None:
    written = 0

    def put(data: bytes) -> None:
        nonlocal written
        written += len(data)
        if written > limit:
            raise MemoryFormatError(
                f"the {kind} stream decompresses to more than {limit} bytes, far beyond the guest's memory",
                offset=offset,
                path=str(path),
            )
        spool.write(data)

    if kind in _DECOMPRESSORS:
        engine = _DECOMPRESSORS[kind]()
        position = offset
        try:
            while not engine.eof and (chunk := os.pread(fd, CHUNK, position)):
                position += len(chunk)
                while True:  # bounded output per call: a bomb never allocates more than CHUNK
                    put(engine.decompress(chunk, CHUNK))
                    if kind == "gzip":
                        chunk = engine.unconsumed_tail
                        if not chunk:
                            break
                    elif engine.needs_input or engine.eof:
                        break
                    else:
                        chunk = b""
        except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
            raise MemoryFormatError(
                f"the {kind} stream is damaged: {exc}", offset=position, path=str(path)
            ) from None
    else:
        program = _PROGRAMS[kind]
        if shutil.which(program[0]) is None:
            raise MemoryFormatError(
                f"this save is {kind}-compressed; install {program[0]} to read it",
                offset=offset,
                path=str(path),
            )
        os.lseek(fd, offset, os.SEEK_SET)  # the file already opened, never the path again
        process = subprocess.Popen(program, stdin=fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        try:
            while chunk := process.stdout.read(CHUNK):
                put(chunk)
        except BaseException:  # stopped early (a bomb): the program goes with it
            process.kill()
            raise
        finally:
            process.stdout.close()
            error = process.stderr.read(4096).decode(errors="replace").strip()
            process.stderr.close()
            status = process.wait()
        if status != 0:
            raise MemoryFormatError(
                f"{program[0]} could not decompress the stream: {error}", offset=offset, path=str(path)
            )
    spool.flush()
