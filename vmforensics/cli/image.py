"""``vmforensics image info|ls|cat IMAGE``: look inside acquired disk images (any supported format)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import attrs

from vmforensics.errors import ImageFormatError, UsageError
from vmforensics.images import DiskImage, ImageInfo, open_image
from vmforensics.images.open import FORMAT_MODULES

CHUNK = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("image", help="inspect a disk image: info, list or extract files")
    commands = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    info = commands.add_parser("info", help="format, size, allocation and parent chain of an image")
    info.add_argument("image", help="a disk image of any format docs/formats.md lists (found by its content)")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.add_argument("--strict", action="store_true", help="fail on any inconsistency instead of warning")
    _add_format_option(info)
    info.set_defaults(handler=_info)

    ls = commands.add_parser("ls", help="list a directory of the file system inside an image")
    ls.add_argument("image")
    ls.add_argument(
        "path", nargs="?", default="/", help="directory or file inside the file system (default /)"
    )
    _add_partition_option(ls)
    ls.set_defaults(handler=_ls)

    cat = commands.add_parser("cat", help="write a file from inside an image to standard output")
    cat.add_argument("image")
    cat.add_argument("path", help="file inside the file system, e.g. /etc/passwd")
    _add_partition_option(cat)
    cat.set_defaults(handler=_cat)


def _add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=sorted(FORMAT_MODULES),
        help="read the image as this format instead of by its signature "
        "(raw: the file's own bytes, without the no-signature warning)",
    )


def _add_partition_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partition",
        type=int,
        metavar="N",
        help="use the Nth allocated partition (1-based; default: the first one holding a file system)",
    )
    parser.add_argument("--strict", action="store_true", help="fail on any image inconsistency")
    _add_format_option(parser)


# --- info -------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> DiskImage:
    """A missing image is a usage error (exit 2); a damaged one is a failure (exit 1)."""
    if not os.path.isfile(args.image):
        raise UsageError(f"{args.image}: no such image file")
    return open_image(args.image, strict=args.strict, format=args.format)


def _info(args: argparse.Namespace) -> int:
    with _open(args) as disk:
        info = disk.info()
    if args.json:
        print(json.dumps(_plain(info), indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(describe(info)))
    return 0


def _plain(info: ImageInfo) -> dict[str, Any]:
    plain = attrs.asdict(info)
    plain["chain"] = [layer.path for layer in info.chain]
    return plain


def describe(info: ImageInfo) -> Iterator[str]:
    """Human-readable lines: the top layer's facts, then each layer of the chain."""
    yield f"{safe(info.path)}"
    yield f"  format     {kind(info)}"
    yield f"  size       {info.size} bytes ({human(info.size)})"
    if info.allocated is not None:
        yield f"  allocated  {info.allocated} bytes in this layer"
    chain = info.chain
    yield "  chain:"
    for depth, layer in enumerate(chain):
        yield f"    [{depth}] {safe(layer.path)}  {kind(layer)}, {human(layer.size)}"
        if layer.allocated is not None:
            yield f"        allocated {layer.allocated} bytes"
        for key, value in sorted(layer.identifiers.items()):
            yield f"        {key}: {safe(str(value))}"
        for extra in layer.files[1:]:
            yield f"        file: {safe(extra)}"
    warnings = info.all_warnings
    yield f"  warnings:  {len(warnings) or 'none'}"
    for warning in warnings:
        yield f"    - {safe(warning)}"


def kind(info: ImageInfo) -> str:
    return info.format if info.subtype == info.format else f"{info.format} {info.subtype}"


def human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def safe(text: str) -> str:
    """Untrusted names (from images and file systems) with control characters made visible."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


# --- file systems -----------------------------------------------------------------------------


def open_filesystem(disk: DiskImage, partition: int | None) -> Any:
    """The file system inside ``disk``: in the chosen (or first usable) partition, else at offset 0."""
    import pytsk3

    image = disk.as_tsk()
    try:
        volume = pytsk3.Volume_Info(image)
    except OSError:
        volume = None
    if volume is None:
        if partition is not None:
            raise UsageError(f"{disk.path} has no partition table; --partition does not apply")
        try:
            return pytsk3.FS_Info(image, offset=0)
        except OSError as exc:
            raise ImageFormatError(
                "no partition table and no file system found at offset 0", path=disk.path
            ) from exc
    block = volume.info.block_size
    partitions = [p for p in volume if p.flags == pytsk3.TSK_VS_PART_FLAG_ALLOC]
    if partition is not None:
        if not 1 <= partition <= len(partitions):
            raise UsageError(
                f"{disk.path} has {len(partitions)} partition(s); --partition {partition} does not exist"
            )
        chosen = partitions[partition - 1]
        try:
            return pytsk3.FS_Info(image, offset=chosen.start * block)
        except OSError as exc:
            raise ImageFormatError(
                f"partition {partition} (sector {chosen.start}) holds no file system pytsk3 knows",
                path=disk.path,
            ) from exc
    for candidate in partitions:
        try:
            return pytsk3.FS_Info(image, offset=candidate.start * block)
        except OSError:
            continue
    raise ImageFormatError(
        f"none of the {len(partitions)} partition(s) holds a known file system", path=disk.path
    )


def _open_path(fs: Any, path: str) -> Any:
    try:
        return fs.open(path)
    except OSError as exc:
        raise UsageError(f"{path!r} not found in the file system") from exc


def _is_directory(entry: Any) -> bool:
    import pytsk3

    meta = entry.info.meta
    return meta is not None and meta.type == pytsk3.TSK_FS_META_TYPE_DIR


def _ls(args: argparse.Namespace) -> int:
    import pytsk3

    kinds = {
        pytsk3.TSK_FS_META_TYPE_DIR: "d",
        pytsk3.TSK_FS_META_TYPE_REG: "r",
        pytsk3.TSK_FS_META_TYPE_LNK: "l",
    }
    with _open(args) as disk:
        fs = open_filesystem(disk, args.partition)
        entry = _open_path(fs, args.path)
        entries = entry.as_directory() if _is_directory(entry) else [entry]
        for item in entries:
            name = item.info.name.name.decode("utf-8", "backslashreplace")
            if name in (".", ".."):
                continue
            meta = item.info.meta
            kind = kinds.get(meta.type, "-") if meta is not None else "?"
            size = meta.size if meta is not None else 0
            deleted = " (deleted)" if item.info.name.flags & pytsk3.TSK_FS_NAME_FLAG_UNALLOC else ""
            print(f"{kind} {size:>12} {safe(name)}{deleted}")
    return 0


def _cat(args: argparse.Namespace) -> int:
    with _open(args) as disk:
        fs = open_filesystem(disk, args.partition)
        entry = _open_path(fs, args.path)
        if _is_directory(entry):
            raise UsageError(f"{args.path!r} is a directory (use 'vmforensics image ls')")
        if entry.info.meta is None:
            raise UsageError(f"{args.path!r} has no metadata to read its content from")
        out = sys.stdout.buffer
        size = entry.info.meta.size
        offset = 0
        while offset < size:
            chunk = entry.read_random(offset, min(CHUNK, size - offset))
            if not chunk:
                raise ImageFormatError(f"{args.path!r}: file content unreadable at byte {offset} of {size}")
            out.write(chunk)
            offset += len(chunk)
        out.flush()
    return 0
