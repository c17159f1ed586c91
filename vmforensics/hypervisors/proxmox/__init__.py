"""Proxmox VE: a VM by its id, from its .conf and its QMP socket — the Proxmox layer of the qemu package.

Only the registration lives here; the acquirer, survey and CLI are the qemu package's (named by
string, so this package imports no other hypervisor package).
"""

from vmforensics.hypervisors import Hypervisor

HYPERVISOR = Hypervisor(
    name="proxmox",
    title="Proxmox VE",
    acquirer="vmforensics.hypervisors.qemu.acquirer:ProxmoxAcquirer",
    survey="vmforensics.hypervisors.qemu.survey:survey_proxmox",
    preserve=("pause", "save", "none"),
    acquire_cli="vmforensics.hypervisors.qemu.cli:register_acquire_proxmox",
    survey_cli="vmforensics.hypervisors.qemu.cli:register_survey_proxmox",
)
