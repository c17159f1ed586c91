"""libvirt (KVM/QEMU): virsh and file reads over SSH on the host, or on this machine."""

from vmforensics.hypervisors import Hypervisor

HYPERVISOR = Hypervisor(
    name="libvirt",
    title="libvirt (KVM/QEMU)",
    acquirer="vmforensics.hypervisors.libvirt.acquirer:LibvirtAcquirer",
    survey="vmforensics.hypervisors.libvirt.survey:survey_libvirt",
    preserve=("snapshot", "suspend", "save", "none"),
    fileset="libvirt",
    acquire_cli="vmforensics.hypervisors.libvirt.cli:register_acquire",
    survey_cli="vmforensics.hypervisors.libvirt.cli:register_survey",
)
