"""A VM folder reachable as files (mounted datastore, NFS export, copy): .vmx/.vmsd parsing, local survey."""

from vmforensics.hypervisors import Hypervisor

HYPERVISOR = Hypervisor(
    name="local",
    title="VM folders reachable as files",
    acquirer="vmforensics.hypervisors.local.acquirer:LocalAcquirer",
    survey="vmforensics.hypervisors.local.survey:survey_local",
    acquire_cli="vmforensics.cli.acquire_local:register",
    survey_cli="vmforensics.hypervisors.local.cli:register_survey",
)
