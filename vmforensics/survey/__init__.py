"""Survey: what runs where, before anything is seized (read-only inventory and findings).

``survey_local(path)``, ``survey_vmware(host, ...)``, ``survey_libvirt(host, ...)`` and
``survey_hyperv(host, ...)`` return a :class:`SurveyReport`;
``seal_report`` documents it as signed evidence; ``acquire_many`` acquires a selection of it.
Each hypervisor's survey source lives in its package under :mod:`vmforensics.hypervisors`;
names load lazily so that pyVmomi is only imported for a VMware survey.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "survey_local": "vmforensics.hypervisors.local.survey",
    "survey_vmware": "vmforensics.hypervisors.vmware.survey",
    "survey_libvirt": "vmforensics.hypervisors.libvirt.survey",
    "survey_hyperv": "vmforensics.hypervisors.hyperv.survey",
    "SurveyReport": "vmforensics.survey.models",
    "VMRecord": "vmforensics.survey.models",
    "Finding": "vmforensics.survey.models",
    "Thresholds": "vmforensics.survey.models",
    "seal_report": "vmforensics.survey.seal",
    "acquire_many": "vmforensics.survey.acquisition",
    "BatchResult": "vmforensics.survey.acquisition",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'vmforensics.survey' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
