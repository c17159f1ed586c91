"""Acquirers: one per hypervisor, all on the same template (acquire/base.py)."""
