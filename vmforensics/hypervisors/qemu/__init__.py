"""Plain QEMU over QMP (any host with a QMP socket, reached over SSH) and the Proxmox VE layer on top."""

from vmforensics.hypervisors import Hypervisor

HYPERVISOR = Hypervisor(
    name="qemu",
    title="QEMU (QMP over SSH)",
    acquirer="vmforensics.hypervisors.qemu.acquirer:QemuAcquirer",
    preserve=("pause", "save", "none"),
    acquire_cli="vmforensics.hypervisors.qemu.cli:register_acquire",
)
