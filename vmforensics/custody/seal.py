"""Sealing: the signed manifest and its companions, written once beside the evidence files.

``manifest.json`` holds the canonical (RFC 8785) bytes that are signed; ``manifest.json.sig`` the
detached signature with the key id; ``manifest.json.pub`` the public key; ``SHA256SUMS`` lets
anyone check the files with ``sha256sum -c SHA256SUMS`` without this tool, and the manifest holds
its SHA-256, so it is bound to the signature.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import attrs

from vmforensics.custody.certificates import CHAIN_NAME, chain_pem
from vmforensics.custody.evidence import FILES_DIR
from vmforensics.custody.ledger import LEDGER_NAME
from vmforensics.custody.models import Manifest
from vmforensics.custody.signing import Signer
from vmforensics.errors import EvidenceError

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
PUBLIC_KEY_NAME = "manifest.json.pub"
SUMS_NAME = "SHA256SUMS"


def signature_record(manifest_bytes: bytes, key: Signer, *, signed_file: str = MANIFEST_NAME) -> bytes:
    record = {
        "algorithm": key.algorithm,
        "key_id": key.key_id,
        "signed_file": signed_file,
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
    }
    return json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"


def sums_file(
    manifest: Manifest, manifest_bytes: bytes | None = None, ledger_sha256: str | None = None
) -> bytes:
    """SHA256SUMS in coreutils' format (two spaces, paths relative to the evidence directory).

    The sealed SHA256SUMS lists the files/ entries only: the manifest holds its SHA-256 (so it
    cannot hold the manifest's), and the ledger grows after the seal (timestamps, derived
    artifacts), so neither is in it. An export outside the directory may add both.
    """
    import hashlib

    lines = [f"{f.hashes['sha256']}  {f.local_path}" for f in manifest.files]
    if ledger_sha256 is not None:
        lines.append(f"{ledger_sha256}  {LEDGER_NAME}")
    if manifest_bytes is not None:
        lines.append(f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST_NAME}")
    return "".join(f"{line}\n" for line in lines).encode()


def write_exclusive(path: Path, content: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    except FileExistsError as exc:
        raise EvidenceError(f"{path} already exists; sealed records are never overwritten") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def write_sealed_records(root: Path, manifest: Manifest, key: Signer) -> Manifest:
    """Write SHA256SUMS, then the manifest that signs its hash, the signature and the public key;
    returns the manifest as sealed (with ``integrity.sums_sha256``)."""
    import hashlib

    for f in manifest.files:
        if not f.local_path.startswith(f"{FILES_DIR}/"):
            raise EvidenceError(f"manifest entry {f.local_path!r} is outside {FILES_DIR}/")
    sums = sums_file(manifest)
    manifest = attrs.evolve(
        manifest, integrity=attrs.evolve(manifest.integrity, sums_sha256=hashlib.sha256(sums).hexdigest())
    )
    body = manifest.to_json()
    write_exclusive(root / SUMS_NAME, sums)
    write_exclusive(root / MANIFEST_NAME, body)
    write_exclusive(root / SIGNATURE_NAME, signature_record(body, key))
    write_exclusive(root / PUBLIC_KEY_NAME, key.public_key().to_pem())
    if key.certificates:  # the examiner's chain, leaf first (custody/certificates)
        write_exclusive(root / CHAIN_NAME, chain_pem(key.certificates))
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return manifest


def make_read_only(root: Path) -> None:
    """Seal: every file and directory under the evidence directory loses its write bits."""
    for directory, subdirs, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
        for name in subdirs:
            path = Path(directory, name)
            if not path.is_symlink():
                path.chmod(0o555)
    root.chmod(0o555)
