"""The acquisition template (base.py), the copier, the clock and the generic file-set rules.

Each hypervisor's acquirer lives in its package under :mod:`vmforensics.hypervisors`.
"""
