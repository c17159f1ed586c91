"""The one policy for every path taken from source content.

A .vmx key, a VMDK extent line or parent hint, a qcow2 backing or data file name, a VHD/VHDX
parent locator, a libvirt ``<source file=...>`` and a Hyper-V configuration path are all written
by whoever controls the VM. vmforensics reads such a path only when it is

1. beneath one of the roots the acquisition was given (the VM folder, the datastores the
   hypervisor itself names for that VM, and roots the examiner allowed explicitly with
   ``allowed_roots=`` / ``--allow-root``). This is decided on the lexically normalised text, which
   is exact because of 2;
2. reached without a symbolic link on any component: ``openat2`` with
   ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`` from the root's directory where
   the kernel has it, else ``openat`` with ``O_NOFOLLOW`` component by component;
3. a regular file, checked on an ``O_PATH`` descriptor before the file is opened for reading (so a
   FIFO, socket or device is never opened) and again on the descriptor that reads it.

Anything else is a :class:`Refusal` holding the exact reference text, the reason and the file
type; acquirers record it as an omission and the image readers raise it as an ImageFormatError.

Remote sources (SSH, SMB, HTTPS datastores) cannot be opened this way; :class:`RemoteConfinement`
applies 1 to the path string (normalised, beneath the roots, no ``..`` left) and leaves the file
type to what the transport can report (docs/threat-model.md says what each one can prove).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import ntpath
import os
import platform
import posixpath
import stat
import sys
from collections.abc import Callable, Iterable
from typing import BinaryIO, Literal

import attrs

from vmforensics.errors import RefusedPathError, UsageError

log = logging.getLogger(__name__)

#: Why a reference was refused (``Refusal.kind``).
OUTSIDE = "outside-roots"
SYMLINK = "symlink"
NOT_REGULAR = "not-regular"
MISSING = "missing"
UNREADABLE = "unreadable"
INVALID = "invalid"

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine()) if sys.platform == "linux" else None
_O_PATH = getattr(os, "O_PATH", 0)
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


def file_type(mode: int) -> str:
    """A file type in words, for refusals and omissions."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return f"file of type 0o{stat.S_IFMT(mode):o}"


@attrs.frozen
class Refusal:
    """A reference from source content that will not be read, and why (usable as an omission reason)."""

    reference: str
    reason: str
    kind: str
    path: str | None = None
    file_type: str | None = None

    def __str__(self) -> str:
        return f"{self.reason} (reference {self.reference!r})"


@attrs.frozen
class ConfinedPath:
    """A reference resolved to a path beneath one of the roots (lexically; opening checks the rest)."""

    reference: str
    path: str
    root: str
    #: True when the root is one the examiner allowed explicitly (recorded in the manifest).
    explicit: bool = False

    @property
    def relative(self) -> str:
        """The path below its root ('' for the root itself)."""
        return self.path[len(self.root) :].lstrip("/\\")


class PathPolicy:
    """Lexical resolution shared by the local and the remote policy."""

    flavor: Literal["posix", "windows"] = "posix"

    def __init__(
        self, roots: Iterable[str | os.PathLike[str]], allowed_roots: Iterable[str | os.PathLike[str]]
    ):
        self.roots = tuple(self._root(r) for r in roots)
        self.allowed_roots = tuple(self._root(r) for r in allowed_roots)
        if not self.roots and not self.allowed_roots:
            raise UsageError("a confinement needs at least one root")

    # --- path text --------------------------------------------------------------------------

    @property
    def _mod(self):  # type: ignore[no-untyped-def]
        return ntpath if self.flavor == "windows" else posixpath

    def _normalise(self, path: str) -> str:
        if self.flavor == "windows":
            path = path.replace("/", "\\")
            if path.startswith("\\\\?\\UNC\\"):
                path = "\\\\" + path[8:]
            elif path.startswith("\\\\?\\"):
                path = path[4:]
            return ntpath.normpath(path)
        path = posixpath.normpath(path)
        return "/" + path.lstrip("/") if path.startswith("//") else path

    def _root(self, root: str | os.PathLike[str]) -> str:
        text = os.fspath(root)
        if not text or "\0" in text or not self._mod.isabs(text):
            raise UsageError(f"a confinement root must be an absolute path, not {text!r}")
        return self._normalise(text)

    def _key(self, path: str) -> str:
        return path.casefold() if self.flavor == "windows" else path

    def _beneath(self, path: str, root: str) -> bool:
        p, r = self._key(path), self._key(root)
        sep = "\\" if self.flavor == "windows" else "/"
        return p == r or p.startswith(r if r.endswith(sep) else r + sep)

    def resolve(
        self, reference: str, relative_to: str | os.PathLike[str] | None = None
    ) -> ConfinedPath | Refusal:
        """Where ``reference`` (relative to the directory ``relative_to``) lies, if beneath a root.

        The text is normalised lexically (``..`` folded); nothing on disk is touched here.
        """
        if not reference or "\0" in reference:
            return Refusal(reference, "the reference is empty or holds a NUL byte", INVALID)
        mod = self._mod
        text = reference.replace("/", "\\") if self.flavor == "windows" else reference
        if not mod.isabs(text):
            base = (
                os.fspath(relative_to) if relative_to is not None else (self.roots or self.allowed_roots)[0]
            )
            if self.flavor == "windows" and ntpath.splitdrive(text)[0]:  # "C:disk.vhdx": drive-relative
                return Refusal(reference, "a drive-relative path cannot be resolved", INVALID)
            text = mod.join(base, text)
        path = self._normalise(text)
        for root in self.roots:
            if self._beneath(path, root):
                return ConfinedPath(reference, path, root)
        for root in self.allowed_roots:
            if self._beneath(path, root):
                return ConfinedPath(reference, path, root, explicit=True)
        return Refusal(
            reference,
            f"{path} lies outside the acquisition roots ({', '.join(self.roots + self.allowed_roots)}); "
            "a disk that really lives elsewhere needs an explicit allowed root (--allow-root DIR)",
            OUTSIDE,
            path=path,
        )

    def describe(self) -> dict[str, list[str]]:
        """The roots, for the manifest's options and the ledger."""
        return {"roots": list(self.roots), "allowed_roots": list(self.allowed_roots)}


class RemoteConfinement(PathPolicy):
    """The path-string half of the policy for files read over SSH, SMB or HTTPS.

    A transport cannot prove that no component of a remote path is a link (the server resolves
    the path); what it can report about the last component is checked by :meth:`check_stat`.
    """

    def __init__(
        self,
        roots: Iterable[str],
        allowed_roots: Iterable[str] = (),
        *,
        flavor: Literal["posix", "windows"] = "posix",
    ):
        self.flavor = flavor
        super().__init__(roots, allowed_roots)

    def check_stat(self, confined: ConfinedPath, *, is_dir: bool, is_symlink: bool) -> ConfinedPath | Refusal:
        """Refuse what the transport reports as a directory or a symbolic link."""
        if is_symlink:
            return Refusal(confined.reference, f"{confined.path} is a symbolic link", SYMLINK, confined.path)
        if is_dir:
            return Refusal(
                confined.reference, f"{confined.path} is a directory", NOT_REGULAR, confined.path, "directory"
            )
        return confined


class Confinement(PathPolicy):
    """The policy for the local file system: resolve beneath the roots, open regular files only."""

    flavor: Literal["posix", "windows"] = "posix"

    def __init__(
        self, roots: Iterable[str | os.PathLike[str]], allowed_roots: Iterable[str | os.PathLike[str]] = ()
    ):
        super().__init__((os.path.abspath(r) for r in roots), (os.path.abspath(r) for r in allowed_roots))

    def open_regular(
        self, target: ConfinedPath | str, relative_to: str | os.PathLike[str] | None = None
    ) -> int:
        """A read-only descriptor (blocking, close-on-exec, no atime update where allowed) of a
        regular file reached beneath its root without any symbolic link.

        Raises :class:`~vmforensics.errors.RefusedPathError` carrying the :class:`Refusal`.
        """
        confined = target if isinstance(target, ConfinedPath) else self.resolve(target, relative_to)
        if isinstance(confined, Refusal):
            raise RefusedPathError(confined)
        parts = [p for p in confined.relative.split("/") if p]
        if not parts:
            raise RefusedPathError(
                _refusal(confined, "is a root directory, not a file", NOT_REGULAR, "directory")
            )
        try:
            root_fd = os.open(confined.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | _O_PATH)
        except OSError as exc:
            raise RefusedPathError(_os_refusal(confined, exc, confined.root)) from exc
        try:
            path_fd = self._walk(root_fd, parts, confined)
            try:
                info = os.fstat(path_fd)
                if not stat.S_ISREG(info.st_mode):
                    kind = SYMLINK if stat.S_ISLNK(info.st_mode) else NOT_REGULAR
                    raise RefusedPathError(
                        _refusal(confined, f"is a {file_type(info.st_mode)}, not a regular file", kind,
                                 file_type(info.st_mode))
                    )  # fmt: skip
            finally:
                os.close(path_fd)
            fd = self._open_leaf(root_fd, parts, confined)
        finally:
            os.close(root_fd)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
                info.st_dev,
                info.st_ino,
            ):
                raise RefusedPathError(
                    _refusal(confined, f"was replaced while it was opened (now a {file_type(opened.st_mode)})",
                             NOT_REGULAR, file_type(opened.st_mode))
                )  # fmt: skip
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check(
        self, reference: str, relative_to: str | os.PathLike[str] | None = None
    ) -> ConfinedPath | Refusal:
        """Resolve and probe ``reference``: the path when it is a regular file that may be read."""
        confined = self.resolve(reference, relative_to)
        if isinstance(confined, Refusal):
            return confined
        try:
            os.close(self.open_regular(confined))
        except RefusedPathError as exc:
            return exc.refusal
        return confined

    def opener(self) -> Callable[[str], BinaryIO]:
        """An opener for the image readers: a missing file raises FileNotFoundError (so the next
        candidate is tried); any other refusal raises RefusedPathError."""

        def open_confined(path: str) -> BinaryIO:
            try:
                fd = self.open_regular(os.path.abspath(path))  # relative to the working directory, as open()
            except RefusedPathError as exc:
                if exc.refusal.kind == MISSING:
                    raise FileNotFoundError(errno.ENOENT, exc.refusal.reason, path) from exc
                raise
            return os.fdopen(fd, "rb")

        return open_confined

    # --- descriptors ------------------------------------------------------------------------

    def _walk(self, root_fd: int, parts: list[str], confined: ConfinedPath) -> int:
        """An O_PATH descriptor of the last component (not followed if it is a link)."""
        if _openat2 is not None:
            try:
                return _openat2(root_fd, "/".join(parts), _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise RefusedPathError(
                        _refusal(confined, "is reached through a symbolic link", SYMLINK, "symbolic link")
                    ) from exc
                raise RefusedPathError(_os_refusal(confined, exc, confined.path)) from exc
        fd = os.dup(root_fd)
        try:
            for index, part in enumerate(parts):
                here = posixpath.join(confined.root, *parts[: index + 1])
                try:
                    child = os.open(part, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    raise RefusedPathError(_os_refusal(confined, exc, here)) from exc
                os.close(fd)
                fd = child
                if index < len(parts) - 1:
                    mode = os.fstat(fd).st_mode
                    if not stat.S_ISDIR(mode):
                        kind = SYMLINK if stat.S_ISLNK(mode) else NOT_REGULAR
                        raise RefusedPathError(
                            _refusal(confined, f"has a component {here} that is a {file_type(mode)}", kind,
                                     file_type(mode))
                        )  # fmt: skip
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_leaf(self, root_fd: int, parts: list[str], confined: ConfinedPath) -> int:
        """Open the (already checked) last component for reading, without blocking."""

        def attempt(flags: int) -> int:
            if _openat2 is not None:
                return _openat2(root_fd, "/".join(parts), flags)
            parent = os.dup(root_fd)
            try:
                for part in parts[:-1]:
                    child = os.open(
                        part, _O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent
                    )
                    os.close(parent)
                    parent = child
                return os.open(parts[-1], flags, dir_fd=parent)
            finally:
                os.close(parent)

        try:
            try:
                return attempt(_READ_FLAGS | _O_NOATIME)
            except PermissionError:  # O_NOATIME needs ownership of the file
                return attempt(_READ_FLAGS)
        except OSError as exc:
            raise RefusedPathError(_os_refusal(confined, exc, confined.path)) from exc


def open_named_file(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of a file the examiner named (not one found in source content).

    Symbolic links are followed (the examiner chose the path) and block devices are allowed (a
    disk attached for imaging); a FIFO, socket, character device or directory is refused without
    blocking. Raises :class:`~vmforensics.errors.RefusedPathError`.
    """
    text = os.fspath(path)
    where = ConfinedPath(text, text, "")
    try:
        try:
            fd = os.open(text, (_READ_FLAGS & ~os.O_NOFOLLOW) | _O_NOATIME)
        except PermissionError:
            fd = os.open(text, _READ_FLAGS & ~os.O_NOFOLLOW)
    except OSError as exc:
        raise RefusedPathError(_os_refusal(where, exc, text)) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise RefusedPathError(
                _refusal(where, f"is a {file_type(mode)}, not a file", NOT_REGULAR, file_type(mode))
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal(confined: ConfinedPath, what: str, kind: str, ftype: str | None = None) -> Refusal:
    return Refusal(confined.reference, f"{confined.path} {what}", kind, confined.path, ftype)


def _os_refusal(confined: ConfinedPath, exc: OSError, where: str) -> Refusal:
    if exc.errno == errno.ENOENT:
        return Refusal(confined.reference, f"{where} does not exist", MISSING, confined.path)
    if exc.errno == errno.ELOOP:
        return Refusal(
            confined.reference, f"{where} is a symbolic link", SYMLINK, confined.path, "symbolic link"
        )
    if exc.errno == errno.ENOTDIR:
        return Refusal(
            confined.reference, f"a component of {where} is not a directory", NOT_REGULAR, confined.path
        )
    if exc.errno == errno.ENXIO:
        return Refusal(confined.reference, f"{where} is a socket", NOT_REGULAR, confined.path, "socket")
    if exc.errno == errno.EXDEV:
        return Refusal(confined.reference, f"{where} escapes its root", OUTSIDE, confined.path)
    return Refusal(
        confined.reference, f"{where} cannot be opened: {exc.strerror or exc}", UNREADABLE, confined.path
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _make_openat2() -> Callable[[int, str, int], int] | None:
    """``openat2(dirfd, path, flags)`` with no symlinks and nothing above ``dirfd``, or None."""
    if _SYS_OPENAT2 is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    resolve = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS

    def openat2(dir_fd: int, path: str, flags: int) -> int:
        how = _OpenHow(flags, 0, resolve)
        fd = syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return int(fd)

    probe = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | _O_PATH)
    try:
        os.close(openat2(probe, ".", _O_PATH | os.O_CLOEXEC))
    except OSError as exc:  # ENOSYS: old kernel; EPERM: a seccomp filter that does not know it
        log.debug("openat2 unavailable (%s); resolving component by component", exc)
        return None
    finally:
        os.close(probe)
    return openat2


#: openat2 where the kernel has it; None means the per-component openat walk (tests force it).
_openat2 = _make_openat2()


def check_allowed_roots(roots: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The examiner's explicit extra roots as absolute path strings (POSIX or Windows), or UsageError."""
    if isinstance(roots, (str, os.PathLike)):
        raise UsageError("allowed_roots takes a list of folders, not a single string")
    checked = []
    for root in roots:
        text = os.fspath(root)
        if not text or "\0" in text or not (posixpath.isabs(text) or ntpath.isabs(text.replace("/", "\\"))):
            raise UsageError(f"an allowed root must be an absolute path, not {text!r}")
        checked.append(text)
    return checked
