"""Read-only transports: local files, SSH, SMB and vSphere datastore HTTPS."""
