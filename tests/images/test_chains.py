"""Parent chains of every format with parents go through open_image's resolver: a loop (a over b
over a) and a chain deeper than MAX_CHAIN_DEPTH are refused with an ImageFormatError naming the
image, never a RecursionError or a hang. (qcow2 and VMDK have their own tests in
test_confined_resolver.py and test_vmdk.py, a Parallels descriptor's snapshot loop in
test_parallels.py; ASIF and raw images have no parents.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.images.conftest import qemu_img
from tests.images.parallels_builders import descriptor
from tests.images.vdi_builders import build_vdi
from tests.images.vhd_builders import build_differencing_vhd
from tests.images.vhdx_builders import VhdxBuilder
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images import parallels_layout as p
from vmforensics.images import vdi_layout as v
from vmforensics.images.base import MAX_CHAIN_DEPTH

MiB = 1 << 20


def _backed(fmt: str, suffix: str) -> Callable[[Path, list[str]], None]:
    """Layers of a qemu format whose header names its backing file: ``names[i]`` is backed by
    ``names[i + 1]`` and the last by ``names[0]`` when ``loop``, else by a missing name. Made
    by patching one qemu-made header (equal-length names), so 130 layers cost one qemu-img run."""

    def build(folder: Path, names: list[str]) -> None:
        seed = folder / "seed"
        placeholder = "x" * len(names[0])
        qemu_img("create", "-q", "-f", fmt, "-u", "-b", placeholder, "-F", fmt, seed, "1M")
        blob = seed.read_bytes()
        assert blob.count(placeholder.encode()) == 1
        for name, parent in zip(names, names[1:] + names[:1], strict=True):
            (folder / name).write_bytes(blob.replace(placeholder.encode(), parent.encode()))
        seed.unlink()

    build.suffix = suffix  # type: ignore[attr-defined]
    return build


def _vdi(folder: Path, names: list[str]) -> None:
    """Differencing VDIs, each naming the next one's UUID as its parent (the last: the first's)."""
    ids = [uuid.uuid4() for _ in names]
    for index, name in enumerate(names):
        build_vdi(folder / name, MiB, {}, image_type=v.ImageType.DIFF, uuid_create=ids[index],
                  uuid_linkage=ids[(index + 1) % len(names)])  # fmt: skip


def _vhd(folder: Path, names: list[str]) -> None:
    """Differencing VHDs, each with locators naming the next one (built last to first)."""
    qemu_img("create", "-q", "-f", "vpc", folder / names[0], "4M")  # a stand-in for the first parent
    for name, parent in reversed(list(zip(names, names[1:] + names[:1], strict=True))):
        build_differencing_vhd(folder / name, folder / parent, {})


def _vhdx(folder: Path, names: list[str]) -> None:
    """Differencing VHDXs whose parent locators name the next one."""
    for name, parent in zip(names, names[1:] + names[:1], strict=True):
        builder = VhdxBuilder(4 * MiB)
        builder.locator = {"parent_linkage": f"{{{uuid.uuid4()}}}", "relative_path": f".\\{parent}"}
        builder.build(folder / name)


_vdi.suffix = "vdi"  # type: ignore[attr-defined]
_vhd.suffix = "vhd"  # type: ignore[attr-defined]
_vhdx.suffix = "vhdx"  # type: ignore[attr-defined]

BUILDERS = {
    "qcow1": _backed("qcow", "qcow"),
    "qed": _backed("qed", "qed"),
    "vdi": _vdi,
    "vhd": _vhd,
    "vhdx": _vhdx,
}


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_a_parent_loop_is_refused_for_every_format(tmp_path: Path, fmt: str) -> None:
    build = BUILDERS[fmt]
    names = [f"a.{build.suffix}", f"b.{build.suffix}"]  # type: ignore[attr-defined]
    build(tmp_path, names)
    with pytest.raises(ImageFormatError, match="loops back") as caught:
        open_image(tmp_path / names[0])
    assert caught.value.path and caught.value.reason


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_a_parent_chain_deeper_than_the_limit_is_refused_for_every_format(tmp_path: Path, fmt: str) -> None:
    build = BUILDERS[fmt]
    names = [f"layer-{i:04d}.{build.suffix}" for i in range(MAX_CHAIN_DEPTH + 2)]  # type: ignore[attr-defined]
    build(tmp_path, names)  # the last names the first: deeper than the limit before it loops
    with pytest.raises(ImageFormatError, match=f"deeper than {MAX_CHAIN_DEPTH}") as caught:
        open_image(tmp_path / names[0])
    assert caught.value.path


def test_a_parallels_snapshot_chain_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    """A bundle's chain lives in its DiskDescriptor.xml (Shot -> ParentGUID), checked the same way."""
    guids = [f"{{{uuid.UUID(int=i + 1)}}}" for i in range(MAX_CHAIN_DEPTH + 2)]
    shots = [(guid, guids[i + 1] if i + 1 < len(guids) else p.NULL_GUID) for i, guid in enumerate(guids)]
    images = [(guid, "Compressed", f"disk.hdd.0.{guid}.hds") for guid in guids]
    path = tmp_path / p.DESCRIPTOR_NAME
    path.write_text(descriptor([(0, 2048, images)], shots, top=guids[0]))
    with pytest.raises(ImageFormatError, match=f"deeper than {MAX_CHAIN_DEPTH}") as caught:
        open_image(path)
    assert caught.value.path == str(path)
