"""One package per hypervisor, and the registry that tells the CLI, the survey and acquire_many about them.

Each package ``vmforensics/hypervisors/<name>/`` holds its connection, identification,
preservation, file planning, acquirer and survey source, and declares itself in its
``__init__.py`` with one :class:`Hypervisor` record named ``HYPERVISOR``. That file imports
nothing heavy: the acquirer, survey and CLI modules are named as ``"module:attribute"`` strings and
loaded only when used (so pyVmomi is imported only for VMware). :data:`PACKAGES` lists the packages
in the order the CLI shows them; a new hypervisor adds one line there (see docs/writing-a-hypervisor.md).
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs

from vmforensics.errors import UsageError

#: The hypervisor packages under vmforensics.hypervisors, in the order the CLI lists them.
PACKAGES = ("local", "vmware", "hyperv", "libvirt", "qemu", "proxmox")


@attrs.frozen
class Hypervisor:
    """What one hypervisor package offers, by name (nothing is imported until it is used).

    ``acquirer`` is the :class:`~vmforensics.acquire.base.Acquirer` subclass and ``survey`` the
    survey function (or None) as ``"module:attribute"``. ``preserve`` are the acquirer's preserve
    modes, the first the CLI's default. ``fileset`` names its file-role rules in
    :mod:`vmforensics.acquire.filesets` (None when its files are planned another way).
    ``acquire_cli`` and ``survey_cli`` are ``"module:function"`` taking the ``acquire`` /
    ``survey`` sub-parsers and adding ``<name>`` with its options and handler.
    """

    name: str
    title: str
    acquirer: str
    survey: str | None = None
    preserve: tuple[str, ...] = ("none",)
    fileset: str | None = None
    acquire_cli: str | None = None
    survey_cli: str | None = None


def hypervisors() -> tuple[Hypervisor, ...]:
    """Every registered hypervisor, in :data:`PACKAGES` order."""
    return tuple(_record(name) for name in PACKAGES)


def get(name: str) -> Hypervisor:
    """The hypervisor registered as ``name``; UsageError names the known ones otherwise."""
    if name not in PACKAGES:
        raise UsageError(f"no hypervisor {name!r} (known: {', '.join(PACKAGES)})")
    return _record(name)


def load(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference of a :class:`Hypervisor` names (imports it)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _record(name: str) -> Hypervisor:
    record = importlib.import_module(f"{__name__}.{name}").HYPERVISOR
    if not isinstance(record, Hypervisor) or record.name != name:
        raise TypeError(f"vmforensics.hypervisors.{name}.HYPERVISOR must be a Hypervisor named {name!r}")
    return record
