"""Microsoft Hyper-V: reviewed PowerShell over WinRM, files over SMB."""

from vmforensics.hypervisors import Hypervisor

HYPERVISOR = Hypervisor(
    name="hyperv",
    title="Microsoft Hyper-V",
    acquirer="vmforensics.hypervisors.hyperv.acquirer:HyperVAcquirer",
    survey="vmforensics.hypervisors.hyperv.survey:survey_hyperv",
    preserve=("checkpoint", "save", "none"),
    fileset="hyperv",
    acquire_cli="vmforensics.hypervisors.hyperv.cli:register_acquire",
    survey_cli="vmforensics.hypervisors.hyperv.cli:register_survey",
)
