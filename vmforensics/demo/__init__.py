"""The demo: a small, realistic VMware VM folder built from scratch, acquired, verified and opened."""
