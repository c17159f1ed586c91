"""``open_memory(path)``: detect the saved-state format by content and return its GuestMemory."""

from __future__ import annotations

import os
from pathlib import Path

from vmforensics.errors import MemoryFormatError
from vmforensics.memory import elf, hyperv_state, libvirt_save, lime, qemu_stream, vmware_state
from vmforensics.memory.base import GuestMemory

FORMATS = ("vmware", "libvirt", "qemu", "elf", "lime", "hyperv")


def detect(path: str | os.PathLike[str]) -> str:
    """The saved-state format of ``path`` by its first bytes (a .vmem by its state file beside it)."""
    path = Path(path)
    head = _head(path)
    if vmware_state.is_state(head):
        return "vmware"
    if libvirt_save.is_save(head):
        return "libvirt"
    if qemu_stream.is_qevm(head):
        return "qemu"
    if elf.is_elf(head):
        return "elf"
    if lime.is_lime(head):
        return "lime"
    if hyperv_state.is_hyperv(head):
        return "hyperv"
    if path.suffix.lower() == ".vmem" and vmware_state.sibling_state(path) is not None:
        return "vmware"
    raise MemoryFormatError(
        "not a saved memory state this reader knows (VMware .vmss/.vmsn/.vmem, libvirt save, QEMU "
        "migration stream, ELF core, LiME, Hyper-V .vmrs)",
        offset=0,
        path=str(path),
    )


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(64)


def open_memory(
    path: str | os.PathLike[str],
    *,
    vmem: str | os.PathLike[str] | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
) -> GuestMemory:
    """The guest-physical memory saved in ``path``.

    ``vmem``: the VMware memory file when it is not the same-named .vmem beside the state file.
    ``spool_dir``: where a compressed libvirt save is decompressed to (a temporary file, removed
    on close; default: the system temporary directory).
    """
    path = Path(path)
    kind = detect(path)
    if kind == "vmware":
        if vmware_state.is_state(_head(path)):
            return vmware_state.open_vmware(path, Path(vmem) if vmem else None)
        return vmware_state.open_vmware(vmware_state.sibling_state(path) or path, path)
    if kind == "libvirt":
        return libvirt_save.open_save(path, spool_dir=Path(spool_dir) if spool_dir else None)
    if kind == "qemu":
        return qemu_stream.open_qevm(path)
    if kind == "elf":
        return elf.open_elf(path)
    if kind == "lime":
        return lime.open_lime(path)
    return hyperv_state.open_hyperv(path)
