"""Source names that cannot be stored or shown as they are: reversible escaping and safe display.

A source file name is whatever bytes the attacker chose: not UTF-8, a Windows device name
(``CON.log``), a backslash, a newline. Evidence keeps the original bytes in the record and stores
the file under an escaped name: ``%XX`` for each byte that cannot be stored as is (``%`` itself
included, so :func:`unescape` always gives the original back). Names that still cannot be
stored (a component over 255 bytes, an empty one) raise :class:`UnsafePathError` and become an
omission. Human output goes through :func:`printable`, so a planted name cannot inject lines.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

from vmforensics.errors import UnsafePathError

MAX_COMPONENT_BYTES = 255
_WINDOWS_DEVICE = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def _needs_escape(char: str) -> bool:
    code = ord(char)
    return char in "%\\" or code < 0x20 or 0x7F <= code <= 0x9F or 0xDC80 <= code <= 0xDCFF


def _escaped(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in os.fsencode(char))


def escape_component(name: str) -> str:
    """One path component as it can be stored: bytes that can't be kept become ``%XX``."""
    if not name:
        raise UnsafePathError("empty path component")
    out = "".join(_escaped(c) if _needs_escape(c) else c for c in name)
    stripped = out.rstrip(" .")
    if stripped != out:  # trailing dots and spaces (and "." / "..") are not kept by every system
        out = stripped + "".join(_escaped(c) for c in out[len(stripped) :])
    if _WINDOWS_DEVICE.match(out.rstrip(" .")):
        out = _escaped(out[0]) + out[1:]
    if re.match(r"^[A-Za-z]:", out):  # would read as a drive letter
        out = out[0] + "%3A" + out[2:]
    if len(out.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise UnsafePathError(
            f"name {printable(name)!r} cannot be stored: over {MAX_COMPONENT_BYTES} bytes once escaped"
        )
    return out


def escape_relative(name: str) -> str:
    """A relative evidence name, component by component (``/`` separates components)."""
    return "/".join(escape_component(part) for part in name.split("/"))


def unescape(name: str) -> str:
    """The original name (with undecodable bytes as surrogate escapes, like ``os.fsdecode``)."""
    raw = os.fsencode(name)
    return os.fsdecode(
        _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), raw.decode("latin-1")).encode("latin-1")
    )


def is_text(name: str) -> bool:
    """True when ``name`` is valid Unicode text (no undecodable source bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(name: str) -> str:
    """A JSON-safe form of a source name: undecodable bytes shown as ``\\xNN``."""
    return (
        name if is_text(name) else name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    )


def json_safe(value: Any) -> Any:
    """``value`` (plain JSON-like data) with every string made storable by :func:`text`."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def original_b64(name: str) -> str | None:
    """Base64 of the name's exact bytes when it is not valid UTF-8 (else None: the text is exact)."""
    return None if is_text(name) else base64.b64encode(os.fsencode(name)).decode("ascii")


def printable(name: str) -> str:
    """``name`` for a terminal or report: every non-printable character (line breaks, escapes,
    bidirectional controls, undecodable bytes) and the backslash shown as an escape sequence."""
    out = []
    for char in name:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable() or char == " ":
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}"))
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)
