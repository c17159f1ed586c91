"""Open a transport from a URL: ``file:///p``, ``ssh://user@host:port/p``, ``smb://user@host/share/p``,
``https://host/folder/p?dcPath=…&dsName=…``. Credentials never travel in URLs."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from vmforensics.errors import UsageError
from vmforensics.transport.base import Transport

#: scheme -> (module, class); imported only when used, so an unused SDK is never loaded.
TRANSPORTS = {
    "file": ("vmforensics.transport.local", "LocalTransport"),
    "ssh": ("vmforensics.transport.ssh", "SSHTransport"),
    "smb": ("vmforensics.transport.smb", "SMBTransport"),
    "https": ("vmforensics.transport.https", "HTTPSDatastoreTransport"),
}


def transport_class(url: str) -> type[Transport]:
    scheme = urlsplit(url).scheme or "file"
    if scheme not in TRANSPORTS:
        raise UsageError(f"unsupported URL scheme {scheme!r} in {url!r} (use {', '.join(TRANSPORTS)})")
    module, name = TRANSPORTS[scheme]
    return getattr(importlib.import_module(module), name)


def open_url(url: str, **options: Any) -> tuple[Transport, str]:
    """Connect the transport a URL names and return it with the remote path."""
    if "://" not in url:
        url = "file://" + url
    return transport_class(url).from_url(url, **options)
