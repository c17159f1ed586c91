"""Where a libvirt domain's backing files may be read from, and the check each one must pass.

The image a domain's XML names is the hypervisor's word; every file below it in a backing chain
(and every qcow2 external data file) is named inside an image header, written by whoever controls
the guest. Such a file is read only when it lies beneath a root (the folders of the domain XML's
disk sources, the target paths of the storage pools holding them, the examiner's
``allowed_roots``), no component below that root is a symbolic link, and it is a regular file
(or a block device, measured as before). Types come from ``stat -c %F`` on the host (``lstat``:
links are reported, never followed), one command per file for every component at once.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from vmforensics.confine import (
    MISSING,
    NOT_REGULAR,
    SYMLINK,
    UNREADABLE,
    ConfinedPath,
    Refusal,
    RemoteConfinement,
)
from vmforensics.hypervisors.libvirt.commands import Host
from vmforensics.hypervisors.libvirt.domain_xml import DiskSpec, parse_xml

#: Pool types whose volumes are plain files in one folder (the others are LVM, iSCSI, RBD...).
FILE_POOLS = ("dir", "fs", "netfs")
_REGULAR = "regular file"
_BLOCK = "block special file"
_DIRECTORY = "directory"


def disk_folders(disks: Iterable[DiskSpec]) -> list[str]:
    """The folders of the file and volume disks the domain XML names."""
    return sorted(
        {
            posixpath.dirname(d.path)
            for d in disks
            if d.path and d.type in ("file", "volume") and d.path.startswith("/")
        }
    )


def pool_roots(host: Host) -> list[str]:
    """Target paths of the host's file storage pools (read-only ``virsh pool-list``/``pool-dumpxml``).

    Every file pool counts, not only those holding a disk: golden images usually sit in a pool of
    their own, and a pool is a folder the host's administrator, not the guest, declared as storage.
    """
    roots = []
    for name in host.virsh("pool-list", "--all", "--name").stdout.split():
        text = host.virsh("pool-dumpxml", "--pool", name, check=False).stdout
        if not text.strip():
            continue
        root = parse_xml(text, f"XML of pool {name}")
        path = (root.findtext("target/path") or "").strip()
        if root.get("type") in FILE_POOLS and posixpath.isabs(path):
            roots.append(posixpath.normpath(path))
    return sorted(set(roots))


def check_member(host: Host, confinement: RemoteConfinement, reference: str) -> ConfinedPath | Refusal:
    """``reference`` (an absolute host path named by an image) if it may be read, else the refusal."""
    resolved = confinement.resolve(reference)
    if isinstance(resolved, Refusal):
        return resolved
    parts = [p for p in resolved.relative.split("/") if p]
    if not parts:
        return Refusal(reference, f"{resolved.path} is a root folder, not a file", NOT_REGULAR, resolved.path)
    components = [posixpath.join(resolved.root, *parts[: i + 1]) for i in range(len(parts))]
    result = host.run(["stat", "-c", "%F", "--", *components], check=False)
    types = result.stdout.splitlines()
    if result.status != 0 or len(types) != len(components):
        message = (result.stderr.strip() or result.stdout.strip()).replace("\n", " ")
        if "No such file or directory" in message:  # stat runs with LC_ALL=C
            return Refusal(reference, f"{resolved.path} does not exist on the host", MISSING, resolved.path)
        return Refusal(reference, f"{resolved.path} cannot be checked on the host: {message or result.status}",
                       UNREADABLE, resolved.path)  # fmt: skip
    for here, kind in zip(components[:-1], types[:-1], strict=True):
        if kind == "symbolic link":
            return Refusal(reference, f"{resolved.path} is reached through the symbolic link {here}", SYMLINK,
                           resolved.path, "symbolic link")  # fmt: skip
        if kind != _DIRECTORY:
            return Refusal(reference, f"{resolved.path} has a component {here} that is a {kind}", NOT_REGULAR,
                           resolved.path, kind)  # fmt: skip
    leaf = types[-1]
    if leaf == "symbolic link":
        return Refusal(reference, f"{resolved.path} is a symbolic link", SYMLINK, resolved.path, leaf)
    if leaf not in (_REGULAR, "regular empty file", _BLOCK):
        return Refusal(reference, f"{resolved.path} is a {leaf}, not a regular file", NOT_REGULAR,
                       resolved.path, leaf)  # fmt: skip
    return resolved
