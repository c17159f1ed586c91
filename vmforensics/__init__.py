"""vmforensics: forensic evidence acquisition from virtual machines.

Names are imported lazily so that ``import vmforensics`` stays fast and a missing optional
hypervisor SDK only matters when that hypervisor is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LocalAcquirer": "vmforensics.hypervisors.local.acquirer",
    "VMwareAcquirer": "vmforensics.hypervisors.vmware.acquirer",
    "HyperVAcquirer": "vmforensics.hypervisors.hyperv.acquirer",
    "LibvirtAcquirer": "vmforensics.hypervisors.libvirt.acquirer",
    "QemuAcquirer": "vmforensics.hypervisors.qemu.acquirer",
    "ProxmoxAcquirer": "vmforensics.hypervisors.qemu.acquirer",
    "AcquisitionResult": "vmforensics.acquire.base",
    "CaseInfo": "vmforensics.custody.models",
    "Manifest": "vmforensics.custody.models",
    "SigningKey": "vmforensics.custody.signing",
    "VerifyKey": "vmforensics.custody.signing",
    "PKCS11Key": "vmforensics.custody.pkcs11",
    "timestamp": "vmforensics.custody.timestamps",
    "verify": "vmforensics.custody.verify",
    "VerificationReport": "vmforensics.custody.verify",
    "E01Case": "vmforensics.custody.ewf",
    "export_e01": "vmforensics.custody.ewf",
    "export_e01_into": "vmforensics.custody.ewf",
    "open_image": "vmforensics.images.open",
    "open_memory": "vmforensics.memory.open",
    "GuestMemory": "vmforensics.memory.base",
    "DiskImage": "vmforensics.images.base",
    "ImageInfo": "vmforensics.images.base",
    "FilesAcquirer": "vmforensics.acquire.files",
    "LocalTransport": "vmforensics.transport.local",
    "SSHTransport": "vmforensics.transport.ssh",
    "SMBTransport": "vmforensics.transport.smb",
    "HTTPSDatastoreTransport": "vmforensics.transport.https",
    "open_url": "vmforensics.transport.urls",
    "SurveyReport": "vmforensics.survey.models",
    "survey_local": "vmforensics.hypervisors.local.survey",
    "survey_vmware": "vmforensics.hypervisors.vmware.survey",
    "survey_libvirt": "vmforensics.hypervisors.libvirt.survey",
    "survey_hyperv": "vmforensics.hypervisors.hyperv.survey",
    "survey_proxmox": "vmforensics.hypervisors.qemu.survey",
    "seal_report": "vmforensics.survey.seal",
    "acquire_many": "vmforensics.survey.acquisition",
    "AcquisitionPlan": "vmforensics.acquire.batch_plan",
    "SecretRef": "vmforensics.acquire.batch_plan",
    "KeyRef": "vmforensics.acquire.batch_plan",
    "TokenKeyRef": "vmforensics.acquire.batch_plan",
    "Limits": "vmforensics.acquire.batch",
    "verify_batch": "vmforensics.custody.batch_record",
}
_ERRORS = (
    "VMForensicsError",
    "UsageError",
    "ConnectionError_",
    "AuthenticationError",
    "HostVerificationError",
    "SourceError",
    "VMNotFoundError",
    "VMVanishedError",
    "ObjectVanishedError",
    "SourceChangedError",
    "EvidenceError",
    "UnsafePathError",
    "SigningKeyError",
    "TimestampError",
    "VerificationError",
    "ImageFormatError",
    "MemoryFormatError",
)
_EXPORTS.update({name: "vmforensics.errors" for name in _ERRORS})

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from vmforensics.errors import *  # noqa: F403
    from vmforensics.images.base import DiskImage  # noqa: F401
    from vmforensics.images.open import open_image  # noqa: F401


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'vmforensics' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
