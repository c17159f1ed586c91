"""VMware vCenter and ESXi: the vSphere API (pyVmomi), its TLS policy, datastore files over HTTPS or SSH."""

from vmforensics.hypervisors import Hypervisor

HYPERVISOR = Hypervisor(
    name="vmware",
    title="VMware vCenter / ESXi",
    acquirer="vmforensics.hypervisors.vmware.acquirer:VMwareAcquirer",
    survey="vmforensics.hypervisors.vmware.survey:survey_vmware",
    preserve=("snapshot", "suspend", "none"),
    fileset="vmware",
    acquire_cli="vmforensics.hypervisors.vmware.cli:register_acquire",
    survey_cli="vmforensics.hypervisors.vmware.cli:register_survey",
)
