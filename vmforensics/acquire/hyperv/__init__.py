"""Deprecated: moved to :mod:`vmforensics.hypervisors.hyperv.acquirer` (this path goes away in the next release)."""

from vmforensics._moved import alias

alias(__name__, "vmforensics.hypervisors.hyperv.acquirer")
