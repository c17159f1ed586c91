"""One exception hierarchy for everything a user can cause or meet.

Every error raised on purpose by vmforensics is a :class:`VMForensicsError`; the message says what
went wrong and, where there is one, what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmforensics.confine import Refusal


class VMForensicsError(Exception):
    """Base class of every error vmforensics raises on purpose."""


class UsageError(VMForensicsError, ValueError):
    """An argument passed to the library is invalid (caught before anything is touched)."""


class ConnectionError_(VMForensicsError):  # noqa: N801, N818 - the name DESIGN.md gives; avoids the builtin
    """A hypervisor or transport could not be reached, or dropped the connection."""


class AuthenticationError(ConnectionError_):
    """The server refused the credentials."""


class HostVerificationError(ConnectionError_):
    """The server's TLS certificate or SSH host key is unknown or does not match the pin.

    ``fingerprint`` is what the server presented, when known, so the examiner can check it.
    """

    fingerprint: str | None = None


class SourceError(VMForensicsError):
    """The source (hypervisor, VM, remote file) is missing, unreadable or behaved unexpectedly."""


class VMNotFoundError(SourceError):
    """No VM matches the name, UUID or reference given."""


class ObjectVanishedError(SourceError):
    """A vSphere managed object (``reference``, e.g. ``datastore-12``) no longer exists: it was
    removed between the call that listed it and the call that read it."""

    def __init__(self, message: str, *, reference: str):
        self.reference = reference
        super().__init__(message)


class VMVanishedError(VMNotFoundError):
    """The VM being acquired was removed from the inventory (unregistered or deleted) during the run."""


class RefusedPathError(SourceError):
    """A path taken from source content is outside the acquisition roots, is reached through a
    symbolic link, or is not a regular file (vmforensics.confine); ``refusal`` says which."""

    def __init__(self, refusal: Refusal):
        self.refusal = refusal
        super().__init__(str(refusal))


class SourceChangedError(SourceError):
    """A source file changed (size or modification time) while it was being acquired."""


class EvidenceError(VMForensicsError):
    """The evidence directory cannot be written as required (exists, not empty, unsafe name...)."""


class OutputInUseError(EvidenceError, UsageError):
    """``--out`` names something that cannot become a new evidence directory (not empty, sealed,
    not a directory, a symbolic link): a command-line mistake, refused before anything is written."""


class ResumeRefusedError(EvidenceError):
    """``--resume`` cannot prove that the interrupted run acquired the same source, unchanged; the
    evidence written so far is kept and nothing is spliced onto it (acquire into a new directory)."""


class UnsafePathError(EvidenceError):
    """An untrusted source name would escape the evidence directory or is not a valid file name."""


class SigningKeyError(VMForensicsError):
    """A signing key cannot be loaded, saved or used (wrong passphrase, unsupported algorithm)."""


class TimestampError(VMForensicsError):
    """An RFC 3161 time-stamping authority could not be reached, refused, or gave a bad token."""


class VerificationError(VMForensicsError):
    """An evidence directory failed verification where the caller asked for an exception."""


class ImageFormatError(VMForensicsError):
    """A disk image is malformed, unsupported, or needs a file that is missing.

    ``offset`` is the byte offset in ``path`` where the problem was found, when there is one.
    """

    def __init__(self, reason: str, *, offset: int | None = None, path: str | None = None):
        self.reason = reason
        self.offset = offset
        self.path = path
        where = []
        if path:
            where.append(str(path))
        if offset is not None:
            where.append(f"offset {offset} (0x{offset:x})")
        super().__init__(f"{': '.join([', '.join(where), reason]) if where else reason}")


class MemoryFormatError(ImageFormatError):
    """A saved memory state (VMware .vmss/.vmsn, QEMU/libvirt save, ELF core, LiME, Hyper-V .vmrs)
    is malformed or uses a feature that is not understood; nothing is guessed.

    ``offset`` is the byte offset in ``path`` where the problem was found, when there is one.
    """
