"""Plain QEMU over QMP (any host with a QMP socket, reached over SSH) and the Proxmox VE layer on top."""
