"""XML written by the attacker (Parallels DiskDescriptor.xml, VirtualBox .vbox registries).

The standard library's expat never fetches external entities; this module also refuses any
document type declaration (so no entity is ever expanded) and bounds the document's size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vmforensics.errors import ImageFormatError

#: Descriptors and registries are a few KiB; anything beyond this is refused unread.
MAX_XML_BYTES = 4 << 20


def parse(raw: bytes, *, path: str, what: str) -> ET.Element:
    """The root element of ``raw``, or ImageFormatError naming ``what`` and why it was refused."""
    if len(raw) > MAX_XML_BYTES:
        raise ImageFormatError(
            f"{what} of {len(raw)} bytes exceeds the {MAX_XML_BYTES}-byte limit", path=path
        )
    if b"\0" in raw:  # UTF-16/32 would hide a declaration from the check below
        raise ImageFormatError(f"{what} is not UTF-8 text", path=path)
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise ImageFormatError(f"{what} declares a document type or entities, which are refused", path=path)
    parser = ET.XMLParser(encoding="utf-8")  # whatever the declaration claims
    try:
        parser.feed(raw)
        return parser.close()
    except ET.ParseError as exc:
        line, column = exc.position
        raise ImageFormatError(
            f"{what} is not well-formed XML (line {line}, column {column})", path=path
        ) from exc
    except (LookupError, ValueError) as exc:
        raise ImageFormatError(f"{what} cannot be parsed: {exc}", path=path) from exc
