"""Other tools' views of a sealed acquisition: DFXML, CASE/UCO JSON-LD and SHA256SUMS.

Each view is derived from the manifest (and, for CASE, the custody ledger); none of them is signed,
so an export says what the manifest claims, and ``verify`` remains the proof. The output for a
given evidence directory is deterministic: identifiers are derived from the acquisition id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shlex
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmforensics.custody.ledger import LEDGER_NAME, CustodyEvent, check_chain
from vmforensics.custody.models import EvidenceFile, Manifest
from vmforensics.custody.seal import MANIFEST_NAME, sums_file
from vmforensics.errors import EvidenceError, UsageError

FORMATS = ("dfxml", "case", "sums")

DFXML_NS = "http://www.forensicswiki.org/wiki/Category:Digital_Forensics_XML"
DFXML_VERSION = "2.0.0-beta.0"
DC_NS = "http://purl.org/dc/elements/1.1/"
#: Our extension elements inside DFXML (the schema admits elements of other namespaces).
VMF_NS = "urn:vmforensics:dfxml:1"

CASE_CONTEXT = {
    "case-investigation": "https://ontology.caseontology.org/case/investigation/",
    "uco-action": "https://ontology.unifiedcyberontology.org/uco/action/",
    "uco-core": "https://ontology.unifiedcyberontology.org/uco/core/",
    "uco-identity": "https://ontology.unifiedcyberontology.org/uco/identity/",
    "uco-observable": "https://ontology.unifiedcyberontology.org/uco/observable/",
    "uco-tool": "https://ontology.unifiedcyberontology.org/uco/tool/",
    "uco-types": "https://ontology.unifiedcyberontology.org/uco/types/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vmforensics:case-export")
_HASH_NAMES = {"md5": "MD5", "sha1": "SHA1", "sha256": "SHA256", "sha512": "SHA512"}
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# --- reading an evidence directory -----------------------------------------------------------------


def load_manifest(directory: str | Path) -> tuple[Manifest, bytes]:
    """The manifest of a sealed evidence directory and its exact bytes."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"{directory} has no {MANIFEST_NAME}: not a sealed evidence directory") from exc
    return Manifest.from_json(raw), raw


def load_events(directory: str | Path, manifest: Manifest) -> list[CustodyEvent]:
    """The custody ledger, refused unless its chain is intact and passes through the signed head
    (events after it, such as timestamps and derived artifacts, are chained to it)."""
    path = Path(directory) / LEDGER_NAME
    chain = check_chain(path)
    signed = manifest.integrity.ledger_events
    head = chain.head_after(signed) if signed else None
    if not chain.ok or head != manifest.integrity.ledger_head:
        reasons = "; ".join(chain.problems) or "it does not pass through the head signed in the manifest"
        raise EvidenceError(f"{path} does not match the sealed manifest ({reasons}); run vmforensics verify")
    return [CustodyEvent(**json.loads(line)) for line in chain.lines]


def export_directory(directory: str | Path, fmt: str) -> bytes:
    """The ``fmt`` view ("dfxml", "case" or "sums") of the evidence directory ``directory``."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    manifest, raw = load_manifest(directory)
    if fmt == "dfxml":
        return to_dfxml(manifest)
    if fmt == "case":
        return json.dumps(to_case(manifest, load_events(directory, manifest)), indent=2).encode() + b"\n"
    ledger = (Path(directory) / LEDGER_NAME).read_bytes()
    return sha256sums(manifest, raw, ledger)


# --- SHA256SUMS -------------------------------------------------------------------------------------


def sha256sums(manifest: Manifest, manifest_bytes: bytes | None = None, ledger: bytes | None = None) -> bytes:
    """``sha256sum -c`` input for the evidence files (and the manifest and ledger, when given)."""
    if any("sha256" not in f.hashes for f in manifest.files):
        raise UsageError("the manifest has files without a SHA-256; SHA256SUMS cannot list them")
    if manifest_bytes is not None and ledger is not None:
        return sums_file(manifest, manifest_bytes, hashlib.sha256(ledger).hexdigest())
    return "".join(f"{f.hashes['sha256']}  {f.local_path}\n" for f in manifest.files).encode()


# --- DFXML --------------------------------------------------------------------------------------------


def to_dfxml(manifest: Manifest) -> bytes:
    """A DFXML document: one ``fileobject`` per evidence file, the tool and examiner in ``creator``."""
    ET.register_namespace("", DFXML_NS)
    ET.register_namespace("dc", DC_NS)
    ET.register_namespace("vmf", VMF_NS)
    root = ET.Element(_d("dfxml"), {"version": DFXML_VERSION})
    metadata = ET.SubElement(root, _d("metadata"))
    _text(metadata, f"{{{DC_NS}}}type", "Virtual machine evidence acquisition")
    _text(metadata, f"{{{DC_NS}}}identifier", f"urn:uuid:{manifest.acquisition_id}")
    _text(metadata, f"{{{DC_NS}}}creator", manifest.case.examiner)
    _text(metadata, f"{{{DC_NS}}}date", manifest.finished)
    _text(metadata, f"{{{DC_NS}}}description", manifest.case.description)
    _text(metadata, f"{{{DC_NS}}}relation", f"case {manifest.case.case_id}")
    _creator(root, manifest)
    source = ET.SubElement(root, _d("source"))
    vm = manifest.source.vm
    _text(source, _d("image_filename"), vm.config_path if vm else None)
    for number, entry in enumerate(manifest.files, start=1):
        _fileobject(root, number, entry)
    for omission in manifest.omissions:
        ET.SubElement(
            root,
            _v("omission"),
            {
                "source_path": _xml_safe(omission.source_path),
                "role": omission.role,
                "reason": _xml_safe(omission.reason),
            },
        )
    _case_facts(root, manifest)
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


def _creator(root: ET.Element, manifest: Manifest) -> None:
    host = manifest.examiner_host
    creator = ET.SubElement(root, _d("creator"), {"version": "1.0"})
    _text(creator, _d("program"), manifest.tool.name)
    _text(creator, _d("version"), manifest.tool.version)
    environment = ET.SubElement(creator, _d("execution_environment"))
    _text(environment, _d("os_sysname"), host.os.split("-", 1)[0])
    _text(environment, _d("os_version"), host.os)
    _text(environment, _d("host"), host.fqdn or host.hostname)
    _text(environment, _d("command_line"), shlex.join(host.command_line) if host.command_line else None)
    _text(environment, _d("username"), host.user)
    _text(environment, _d("start_time"), manifest.started)
    ET.SubElement(creator, _d("library"), {"name": "python", "version": host.python})


def _fileobject(root: ET.Element, number: int, entry: EvidenceFile) -> None:
    item = ET.SubElement(root, _d("fileobject"))
    _text(item, _d("filename"), entry.local_path)
    _text(item, _d("id"), str(number))
    _text(item, _d("name_type"), "r")
    _text(item, _d("filesize"), str(entry.size))
    _text(item, _d("mtime"), _iso(entry.source_mtime))
    for algorithm, value in entry.hashes.items():
        kind = algorithm if algorithm in _HASH_NAMES else "other"
        _text(item, _d("hashdigest"), value.lower()).set("type", kind)
    _text(item, _v("source_path"), entry.source_path)
    _text(item, _v("role"), entry.role)
    _text(item, _v("transport"), entry.transport)
    _text(item, _v("acquisition_start"), entry.started)
    _text(item, _v("acquisition_end"), entry.finished)
    if entry.size_reported is not None:
        _text(item, _v("size_reported"), str(entry.size_reported))
    if entry.remote_hash is not None:
        _text(item, _v("remote_hash"), entry.remote_hash.value or "").attrib.update(
            algorithm=entry.remote_hash.algorithm, matched=str(entry.remote_hash.matched).lower()
        )
    for note in entry.notes:
        _text(item, _v("note"), note)


def _case_facts(root: ET.Element, manifest: Manifest) -> None:
    facts = ET.SubElement(root, _v("acquisition"), {"id": manifest.acquisition_id})
    _text(facts, _v("case_id"), manifest.case.case_id)
    _text(facts, _v("evidence_id"), manifest.case.evidence_id)
    _text(facts, _v("source_kind"), manifest.source.kind)
    _text(facts, _v("source_host"), manifest.source.host)
    vm = manifest.source.vm
    if vm is not None:
        _text(facts, _v("vm_name"), vm.name)
        _text(facts, _v("vm_uuid"), vm.uuid)
        for mac in vm.mac_addresses:
            _text(facts, _v("mac_address"), mac)
    _text(facts, _v("ledger_head"), manifest.integrity.ledger_head)
    _text(facts, _v("signer_key_id"), manifest.integrity.signer_key_id)


def _d(name: str) -> str:
    return f"{{{DFXML_NS}}}{name}"


def _v(name: str) -> str:
    return f"{{{VMF_NS}}}{name}"


def _text(parent: ET.Element, tag: str, value: str | None) -> ET.Element:
    """A child element holding ``value`` (none when ``value`` is None)."""
    if value is None:
        return ET.Element(tag)
    element = ET.SubElement(parent, tag)
    element.text = _xml_safe(value)
    return element


def _xml_safe(text: str) -> str:
    """Characters XML 1.0 cannot carry (controls, lone surrogates from undecodable names) as \\xNN."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- CASE / UCO ---------------------------------------------------------------------------------------


def to_case(manifest: Manifest, events: Sequence[CustodyEvent] = ()) -> dict[str, Any]:
    """A CASE/UCO JSON-LD graph: the acquisition as an InvestigativeAction performed by the examiner
    with the tool, its custody events as sub-actions, and File observables with their hashes."""
    node = _Nodes(manifest.acquisition_id)
    examiner = node("examiner", "uco-identity:Person", {"uco-core:name": manifest.case.examiner})
    tool = node(
        "tool",
        "uco-tool:Tool",
        {
            "uco-core:name": manifest.tool.name,
            "uco-tool:version": manifest.tool.version,
            "uco-tool:toolType": "acquisition",
        },
    )
    host = manifest.examiner_host
    workstation = node(
        "examiner-host",
        "uco-observable:Computer",
        {"uco-core:name": host.fqdn or host.hostname, "uco-core:description": f"{host.os}; user {host.user}"},
    )
    source = node("source-vm", "uco-observable:ObservableObject", _vm_properties(manifest))
    files = [_file_node(node, number, entry) for number, entry in enumerate(manifest.files, start=1)]
    provenance = node(
        "provenance",
        "case-investigation:ProvenanceRecord",
        {
            "uco-core:description": (
                f"evidence sealed under ledger head {manifest.integrity.ledger_head} "
                f"({manifest.integrity.ledger_events} events), signed by {manifest.integrity.signer_key_id}"
            ),
            "uco-core:object": [_ref(f) for f in files],
            **(
                {"case-investigation:exhibitNumber": manifest.case.evidence_id}
                if manifest.case.evidence_id
                else {}
            ),
        },
    )
    steps = [_event_node(node, event, examiner) for event in events]
    acquisition = node(
        "acquisition",
        "case-investigation:InvestigativeAction",
        {
            "uco-core:name": f"acquisition of {manifest.source.vm.name if manifest.source.vm else 'a VM'}",
            "uco-core:description": f"vmforensics acquisition {manifest.acquisition_id}",
            "uco-action:actionStatus": "Success",
            "uco-action:performer": _ref(examiner),
            "uco-action:instrument": [_ref(tool)],
            "uco-action:environment": _ref(workstation),
            "uco-action:object": [_ref(source)],
            "uco-action:result": [*(_ref(f) for f in files), _ref(provenance)],
            "uco-action:subaction": [_ref(s) for s in steps],
            **_times("uco-action", manifest.started, manifest.finished),
        },
    )
    investigation = node(
        "investigation",
        "case-investigation:Investigation",
        {
            "uco-core:name": manifest.case.case_id,
            "case-investigation:investigationForm": "case",
            "uco-core:object": [_ref(acquisition), _ref(provenance)],
            **({"uco-core:description": manifest.case.description} if manifest.case.description else {}),
        },
    )
    graph = [investigation, acquisition, examiner, tool, workstation, source, provenance, *files, *steps]
    return {"@context": CASE_CONTEXT, "@graph": graph}


class _Nodes:
    """Makes graph nodes with IRIs that are stable for one acquisition."""

    def __init__(self, acquisition_id: str):
        self.acquisition_id = acquisition_id

    def iri(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, f'{self.acquisition_id}/{key}')}"

    def __call__(self, key: str, kind: str, properties: dict[str, Any]) -> dict[str, Any]:
        return {"@id": self.iri(key), "@type": kind, **properties}


def _ref(node: dict[str, Any]) -> dict[str, str]:
    return {"@id": node["@id"]}


def _datetime(value: str) -> dict[str, str]:
    return {"@type": "xsd:dateTime", "@value": value}


def _times(prefix: str, start: str | None, end: str | None) -> dict[str, Any]:
    times = {}
    if start:
        times[f"{prefix}:startTime"] = _datetime(start)
    if end:
        times[f"{prefix}:endTime"] = _datetime(end)
    return times


def _vm_properties(manifest: Manifest) -> dict[str, Any]:
    vm = manifest.source.vm
    facts = [f"{manifest.source.kind} source", f"host {manifest.source.host}" if manifest.source.host else ""]
    if vm is None:
        return {"uco-core:name": "unidentified VM", "uco-core:description": "; ".join(filter(None, facts))}
    facts += [
        f"BIOS UUID {vm.uuid}" if vm.uuid else "",
        f"instance UUID {vm.instance_uuid}" if vm.instance_uuid else "",
        f"configuration {vm.config_path}" if vm.config_path else "",
        f"MACs {', '.join(vm.mac_addresses)}" if vm.mac_addresses else "",
    ]
    return {"uco-core:name": vm.name, "uco-core:description": "; ".join(filter(None, facts))}


def _file_node(node: _Nodes, number: int, entry: EvidenceFile) -> dict[str, Any]:
    key = f"file/{number}"
    file_facet: dict[str, Any] = {
        "uco-observable:fileName": entry.local_path.rsplit("/", 1)[-1],
        "uco-observable:filePath": entry.local_path,
        "uco-observable:sizeInBytes": entry.size,
    }
    if entry.source_mtime is not None:
        file_facet["uco-observable:modifiedTime"] = _datetime(_iso(entry.source_mtime) or "")
    hashes = [
        node(
            f"{key}/hash/{algorithm}",
            "uco-types:Hash",
            {
                "uco-types:hashMethod": _HASH_NAMES.get(algorithm, algorithm.upper()),
                "uco-types:hashValue": {"@type": "xsd:hexBinary", "@value": value.lower()},
            },
        )
        for algorithm, value in entry.hashes.items()
    ]
    return node(
        key,
        "uco-observable:File",
        {
            "uco-core:description": f"{entry.role}, acquired from {entry.source_path} over {entry.transport}",
            "uco-core:tag": [entry.role],
            "uco-core:hasFacet": [
                node(f"{key}/file-facet", "uco-observable:FileFacet", file_facet),
                node(
                    f"{key}/content-facet",
                    "uco-observable:ContentDataFacet",
                    {"uco-observable:sizeInBytes": entry.size, "uco-observable:hash": hashes},
                ),
            ],
        },
    )


def _event_node(node: _Nodes, event: CustodyEvent, examiner: dict[str, Any]) -> dict[str, Any]:
    key = f"custody/{event.seq}"
    arguments = {
        "seq": str(event.seq),
        "prev": event.prev,
        **{k: _argument(v) for k, v in event.details.items()},
    }
    return node(
        key,
        "uco-action:Action",
        {
            "uco-core:name": event.action,
            "uco-core:description": f"custody ledger event {event.seq} ({LEDGER_NAME})",
            "uco-action:performer": _ref(examiner),
            "uco-action:startTime": _datetime(event.time),
            "uco-core:hasFacet": [
                node(
                    f"{key}/argument/{name}",
                    "uco-action:ActionArgumentFacet",
                    {"uco-action:argumentName": name, "uco-action:value": value},
                )
                for name, value in arguments.items()
            ],
        },
    )


def _argument(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
