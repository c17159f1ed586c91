"""Survey: what runs where, before anything is seized (read-only inventory and findings)."""
