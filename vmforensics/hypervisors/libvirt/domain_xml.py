"""Libvirt domain XML: the facts an acquisition needs, and secrets removed before it is kept.

The XML comes from the host and is untrusted: a document type declaration (the door to entity
expansion) is refused, and only the elements libvirt documents are read.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import attrs

from vmforensics.errors import SourceError

#: What replaces a secret's value in the stored XML (the attribute stays, so its presence shows).
REDACTED = "[removed by vmforensics]"
#: Attributes that hold a secret's value wherever they appear (graphics passwords and the like).
_SECRET_ATTRIBUTES = ("passwd", "password", "passphrase")
_START_TAG = re.compile(r"<(?P<element>[A-Za-z_][\w.:-]*)(?P<attributes>\s[^<>]*)>")
_SECRET_ATTRIBUTE = re.compile(
    r"(?<=\s)(?P<name>" + "|".join(_SECRET_ATTRIBUTES) + r""")=(?P<q>['"])(?P<value>.*?)(?P=q)"""
)
#: Elements whose text is a secret: HTTP cookies of network disks.
_SECRET_TEXT = re.compile(r"(<(?P<element>cookie)\s[^<>]*>)(?P<value>[^<]*)(</cookie>)")


@attrs.frozen
class Redaction:
    """One secret removed from a stored XML: where it was, never what it was."""

    element: str
    attribute: str | None
    line: int


def redact_secrets(xml_text: str) -> tuple[str, list[Redaction]]:
    """The XML with every secret value replaced by :data:`REDACTED`, and a list of what was removed."""
    redactions: list[Redaction] = []

    def tag(match: re.Match[str]) -> str:
        line = xml_text.count("\n", 0, match.start()) + 1

        def attribute(found: re.Match[str]) -> str:
            redactions.append(Redaction(match["element"], found["name"], line))
            return f"{found['name']}={found['q']}{REDACTED}{found['q']}"

        return f"<{match['element']}{_SECRET_ATTRIBUTE.sub(attribute, match['attributes'])}>"

    def text(match: re.Match[str]) -> str:
        line = xml_text.count("\n", 0, match.start()) + 1
        redactions.append(Redaction(match["element"], None, line))
        return f"{match[1]}{REDACTED}{match[4]}"

    result = _SECRET_TEXT.sub(text, _START_TAG.sub(tag, xml_text))
    _check_clean(result)
    return result, redactions


def _check_clean(xml_text: str) -> None:
    """Refuse to keep an XML where a secret is still present (a form the redaction did not know)."""
    root = parse_xml(xml_text, "redacted domain XML")
    for element in root.iter():
        for name, value in element.attrib.items():
            if name in _SECRET_ATTRIBUTES and value != REDACTED:
                raise SourceError(f"a {element.tag} {name} survived redaction; the XML is not kept")
    for cookie in root.iter("cookies"):
        for element in cookie:
            if (element.text or "").strip() not in ("", REDACTED):
                raise SourceError("an HTTP cookie survived redaction; the XML is not kept")


def parse_xml(xml_text: str, what: str) -> ET.Element:
    """Parse XML from the host; a DOCTYPE (never written by libvirt) is refused."""
    if "<!DOCTYPE" in xml_text or "<!ENTITY" in xml_text:
        raise SourceError(f"{what} declares a document type; refused (libvirt never writes one)")
    try:
        return ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise SourceError(f"{what} is not well-formed XML: {exc}") from exc


@attrs.frozen
class DiskSpec:
    """One ``<disk>`` of the domain as libvirt describes it."""

    target: str
    device: str  # disk, cdrom, floppy, lun
    type: str  # file, block, network, volume, dir, nvme, vhostuser
    format: str | None  # driver type: qcow2, raw...
    path: str | None  # the host file or device, when there is one
    protocol: str | None = None  # network disks: rbd, iscsi, nbd, gluster, http...
    network_name: str | None = None
    hosts: tuple[str, ...] = ()
    readonly: bool = False
    secret_references: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in attrs.asdict(self).items() if value not in (None, (), False)}


@attrs.frozen
class InterfaceSpec:
    """One ``<interface>``: its MAC and where it is plugged."""

    mac: str | None
    type: str
    source: str | None
    target: str | None
    model: str | None
    link: str | None


@attrs.frozen
class DomainXML:
    """The facts of a domain XML the acquisition uses."""

    name: str
    uuid: str | None
    hypervisor_type: str | None
    domain_id: str | None
    disks: tuple[DiskSpec, ...]
    interfaces: tuple[InterfaceSpec, ...]
    nvram: str | None
    loader: str | None
    graphics: tuple[str, ...]
    tpm: bool
    memory_kib: int | None


def parse_domain(xml_text: str) -> DomainXML:
    """Read name, UUID, disks, interfaces and firmware files from ``virsh dumpxml`` output."""
    root = parse_xml(xml_text, "domain XML")
    if root.tag != "domain":
        raise SourceError(f"expected a <domain> document, got <{root.tag}>")
    devices = root.find("devices")
    disks = tuple(_disk(d) for d in devices.findall("disk")) if devices is not None else ()
    interfaces = tuple(_interface(i) for i in devices.findall("interface")) if devices is not None else ()
    graphics = tuple(g.get("type", "?") for g in devices.findall("graphics")) if devices is not None else ()
    memory = root.findtext("memory")
    unit = (root.find("memory").get("unit", "KiB") if root.find("memory") is not None else "KiB").lower()
    return DomainXML(
        name=(root.findtext("name") or "").strip(),
        uuid=(root.findtext("uuid") or "").strip() or None,
        hypervisor_type=root.get("type"),
        domain_id=root.get("id"),
        disks=disks,
        interfaces=interfaces,
        nvram=_text(root.find("os/nvram")),
        loader=_text(root.find("os/loader")),
        graphics=graphics,
        tpm=devices is not None and devices.find("tpm") is not None,
        memory_kib=_kib(memory, unit),
    )


def _text(element: ET.Element | None) -> str | None:
    if element is None:
        return None
    return (element.text or "").strip() or None


def _kib(value: str | None, unit: str) -> int | None:
    factors = {
        "b": 1 / 1024,
        "bytes": 1 / 1024,
        "k": 1,
        "kib": 1,
        "m": 1024,
        "mib": 1024,
        "g": 1 << 20,
        "gib": 1 << 20,
    }
    if value is None or not value.strip().isdigit() or unit not in factors:
        return None
    return int(int(value) * factors[unit])


def _disk(element: ET.Element) -> DiskSpec:
    source = element.find("source")
    kind = element.get("type", "file")
    driver = element.find("driver")
    path = None
    protocol = network_name = None
    hosts: tuple[str, ...] = ()
    if source is not None:
        if kind == "file":
            path = source.get("file")
        elif kind == "block":
            path = source.get("dev")
        elif kind == "dir":
            path = source.get("dir")
        elif kind == "volume":
            path = source.get("file") or source.get("dev")  # the live XML names the resolved path
        elif kind == "network":
            protocol = source.get("protocol")
            network_name = source.get("name")
            hosts = tuple(
                f"{h.get('name') or h.get('socket') or '?'}{':' + h.get('port') if h.get('port') else ''}"
                for h in source.findall("host")
            )
    secrets = tuple(
        f"{s.get('type', '?')}:{s.get('usage') or s.get('uuid') or '?'}" for s in element.iter("secret")
    )
    return DiskSpec(
        target=element.find("target").get("dev", "?") if element.find("target") is not None else "?",
        device=element.get("device", "disk"),
        type=kind,
        format=driver.get("type") if driver is not None else None,
        path=path,
        protocol=protocol,
        network_name=network_name,
        hosts=hosts,
        readonly=element.find("readonly") is not None,
        secret_references=secrets,
    )


def _interface(element: ET.Element) -> InterfaceSpec:
    source = element.find("source")
    where = None
    if source is not None:
        where = source.get("network") or source.get("bridge") or source.get("dev") or source.get("path")
    mac = element.find("mac")
    target = element.find("target")
    model = element.find("model")
    link = element.find("link")
    return InterfaceSpec(
        mac=mac.get("address").lower() if mac is not None and mac.get("address") else None,
        type=element.get("type", "?"),
        source=where,
        target=target.get("dev") if target is not None else None,
        model=model.get("type") if model is not None else None,
        link=link.get("state") if link is not None else None,
    )


def snapshot_memory_file(xml_text: str) -> str | None:
    """The external memory state file a ``<domainsnapshot>`` names, if any."""
    root = parse_xml(xml_text, "snapshot XML")
    memory = root.find("memory")
    if memory is not None and memory.get("snapshot") == "external":
        return memory.get("file")
    return None
