"""No silent raw: every container signature is recognised; unreadable ones are refused by name.

Samples come from the real tools where Debian has one (ewfacquire, genisoimage, gzip/xz/zstd/bzip2,
tar, zip); the rest carry only the signature their format's public description gives, which is
all detection looks at.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.images.conftest import qemu_img
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images.raw import NO_SIGNATURE

MiB = 1 << 20


def disk_bytes() -> bytes:
    """A plausible raw disk start: an MBR boot code area of text, then zeros."""
    return (b"boot code " * 44).ljust(510, b"\0") + b"\x55\xaa" + bytes(MiB - 512)


def test_a_file_with_no_signature_opens_as_raw_with_a_warning(tmp_path: Path, caplog) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(disk_bytes())
    with caplog.at_level(logging.WARNING), open_image(image) as disk:
        info = disk.info()
        assert (info.format, info.subtype, info.size) == ("raw", "raw", MiB)
        assert info.warnings == (NO_SIGNATURE,)
        assert disk.read_at(0, 10) == b"boot code "
    assert "no known image signature" in caplog.text


def test_a_file_with_no_signature_warns_even_when_strict(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(disk_bytes())
    with open_image(image, strict=True) as disk:
        assert disk.info().warnings == (NO_SIGNATURE,)


def test_format_raw_forces_raw_without_a_warning_even_over_a_signature(tmp_path: Path) -> None:
    plain = tmp_path / "disk.img"
    plain.write_bytes(disk_bytes())
    with open_image(plain, format="raw") as disk:
        assert disk.info().warnings == ()
    compressed = tmp_path / "disk.img.gz"
    compressed.write_bytes(gzip.compress(disk_bytes()))
    with open_image(compressed, format="raw") as disk:
        assert disk.info().format == "raw" and disk.size == compressed.stat().st_size


def test_an_unknown_format_name_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "disk.img"
    plain.write_bytes(disk_bytes())
    with pytest.raises(ImageFormatError, match="unknown image format 'floppy'"):
        open_image(plain, format="floppy")


def test_an_iso9660_image_opens_as_raw_named_iso9660_without_a_warning(tmp_path: Path) -> None:
    if shutil.which("genisoimage") is None:
        pytest.skip("genisoimage (tests/apt-packages.txt) is required")
    content = tmp_path / "cd"
    content.mkdir()
    (content / "readme.txt").write_text("evidence\n")
    iso = tmp_path / "cd.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), str(content)], check=True)
    with open_image(iso) as disk:
        info = disk.info()
        assert (info.format, info.subtype, info.warnings) == ("raw", "iso9660", ())
        assert disk.read_at(0x8001, 5) == b"CD001"


def ewf_image(tmp_path: Path, ewf_format: str) -> Path:
    if shutil.which("ewfacquire") is None:
        pytest.skip("ewfacquire (ewf-tools, tests/apt-packages.txt) is required")
    source = tmp_path / "src.raw"
    source.write_bytes(disk_bytes())
    target = tmp_path / "evidence"
    subprocess.run(
        ["ewfacquire", "-u", "-q", "-t", str(target), "-f", ewf_format, str(source)],
        check=True,
        capture_output=True,
    )
    return tmp_path / "evidence.E01"


def compressed(tmp_path: Path, kind: str) -> Path:
    payload = disk_bytes()
    out = tmp_path / f"disk.{kind}"
    if kind == "gzip":
        out.write_bytes(gzip.compress(payload))
    elif kind == "xz":
        out.write_bytes(lzma.compress(payload))
    elif kind == "bzip2":
        out.write_bytes(bz2.compress(payload))
    elif kind == "zstd":
        (tmp_path / "disk.raw").write_bytes(payload)
        subprocess.run(["zstd", "-q", "-o", str(out), str(tmp_path / "disk.raw")], check=True)
    elif kind == "zip":
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("disk.raw", payload)
    elif kind == "tar":
        (tmp_path / "disk.raw").write_bytes(payload)
        with tarfile.open(out, "w") as archive:
            archive.add(tmp_path / "disk.raw", arcname="disk.raw")
    return out


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd", "zip", "tar"])
def test_a_compressed_or_archived_disk_is_refused_naming_its_container(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ImageFormatError, match=rf"\({kind!r}\).*(decompress|extract) it first"):
        open_image(compressed(tmp_path, kind))


def test_an_e01_made_by_ewfacquire_is_refused_as_ewf(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match=r"EnCase.*\('ewf'\)"):
        open_image(ewf_image(tmp_path, "encase6"))


def signature_only(tmp_path: Path, name: str, head: bytes, *, at: int = 0, tail: bytes = b"") -> Path:
    """A file carrying one signature where its format puts it, in an otherwise plausible disk."""
    body = bytearray(disk_bytes())
    body[at : at + len(head)] = head
    if tail:
        body[-512 : -512 + len(tail)] = tail
    out = tmp_path / name
    out.write_bytes(bytes(body))
    return out


SPEC_SIGNATURES = {
    # format: (head bytes, offset, tail bytes) from each format's public description
    "dmg": (b"", 0, b"koly\x00\x00\x00\x04\x00\x00\x02\x00"),  # UDIF trailer, version 4, 512 bytes
    "sparseimage": (b"sprs\x00\x00\x00\x03", 0, b""),
    "aff": (b"AFF10\r\n\0", 0, b""),
    "ewf2": (b"EVF2\r\n\x81\x00", 0, b""),
    "vmware-saved-state": (struct.pack("<I", 0xBED3BED3), 0, b""),
    "virtualbox-saved-state": (b"\x7fVirtualBox SavedState V2.0\n", 0, b""),
    "bochs": (b"Bochs Virtual HD Image\0", 0, b""),
    "cd-raw-sectors": (b"\x00" + b"\xff" * 10 + b"\x00\x00\x02\x00\x01", 0, b""),
    "7z": (b"7z\xbc\xaf\x27\x1c\x00\x04", 0, b""),
}


@pytest.mark.parametrize("fmt", sorted(SPEC_SIGNATURES))
def test_a_recognised_unreadable_container_is_refused_naming_it(tmp_path: Path, fmt: str) -> None:
    head, offset, tail = SPEC_SIGNATURES[fmt]
    image = signature_only(tmp_path, "evidence.bin", head, at=offset, tail=tail)
    with pytest.raises(
        ImageFormatError, match=rf"\({fmt!r}\), which vmforensics recognises but does not read"
    ):
        open_image(image)


def test_an_aff4_zip_container_is_refused_as_aff4_not_as_a_zip(tmp_path: Path) -> None:
    image = tmp_path / "evidence.aff4"
    with zipfile.ZipFile(image, "w") as archive:
        archive.writestr("container.description", "aff4://685e15cc-d0fb-4dbc-ba47-48117fc77044")
        archive.writestr("information.turtle", "@prefix aff4: <http://aff4.org/Schema#> .\n")
    with pytest.raises(ImageFormatError, match=r"\('aff4'\)"):
        open_image(image)


def test_a_sparsebundle_info_plist_is_refused_pointing_at_its_bands(tmp_path: Path) -> None:
    plist = tmp_path / "Info.plist"
    plist.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n<dict>\n'
        "\t<key>CFBundleInfoDictionaryVersion</key>\n\t<string>6.0</string>\n"
        "\t<key>band-size</key>\n\t<integer>8388608</integer>\n"
        "\t<key>diskimage-bundle-type</key>\n\t<string>com.apple.diskimage.sparsebundle</string>\n"
        "\t<key>size</key>\n\t<integer>1048576</integer>\n</dict>\n</plist>\n"
    )
    with pytest.raises(ImageFormatError, match=r"\('sparsebundle'\).*bands/"):
        open_image(plist)


def test_the_refusal_names_the_file_and_leaves_a_passed_file_object_open(tmp_path: Path) -> None:
    image = compressed(tmp_path, "gzip")
    with image.open("rb") as handle:
        with pytest.raises(ImageFormatError) as caught:
            open_image(handle)
        assert caught.value.path == str(image)
        assert handle.read(2) == b"\x1f\x8b"


def test_a_qcow_of_an_unknown_version_goes_to_the_qcow2_reader_which_names_it(tmp_path: Path) -> None:
    image = signature_only(tmp_path, "future.qcow2", b"QFI\xfb\x00\x00\x00\x07")
    with pytest.raises(ImageFormatError, match="unsupported qcow2 version"):
        open_image(image)


def test_qcow2_is_still_detected_by_magic_after_the_signature_table(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    qemu_img("create", "-f", "qcow2", image, "1M")
    with open_image(image) as disk:
        assert disk.info().format == "qcow2" and disk.info().warnings == ()


def test_the_formats_page_recipe_runs_as_written(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text()
    (recipe,) = re.findall(r"<!-- test: formats-open -->\n```python\n(.*?)```", page, re.DOTALL)
    qemu_img("create", "-f", "vdi", tmp_path / "disk.vdi", "4M")
    signature_only(tmp_path, "evidence.E01", b"EVF\x09\x0d\x0a\xff\x00")
    (tmp_path / "unknown.bin").write_bytes(disk_bytes())
    done = subprocess.run([sys.executable, "-c", recipe], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"vdi dynamic {4 * MiB}"
    assert "('ewf'), which vmforensics recognises but does not read" in lines[1]
    assert lines[2].startswith("raw (") and "no known image signature" in lines[2]


def cli(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmforensics", *map(str, argv)], capture_output=True, text=True, timeout=120
    )


def test_cli_image_info_names_new_formats_refuses_containers_and_forces_raw(tmp_path: Path) -> None:
    vdi = tmp_path / "disk.vdi"
    qemu_img("create", "-f", "vdi", vdi, "4M")
    done = cli("image", "info", "--json", vdi)
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["format"], json.loads(done.stdout)["subtype"]) == ("vdi", "dynamic")
    refused = cli("image", "info", compressed(tmp_path, "gzip"))
    assert refused.returncode == 1 and "'gzip'" in refused.stderr
    plain = tmp_path / "disk.img"
    plain.write_bytes(disk_bytes())
    warned = json.loads(cli("image", "info", "--json", plain).stdout)
    assert warned["format"] == "raw" and warned["warnings"] == [NO_SIGNATURE]
    forced = json.loads(cli("image", "info", "--json", "--format", "raw", plain).stdout)
    assert forced["warnings"] == []
