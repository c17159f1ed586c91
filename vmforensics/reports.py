"""HTML views for Jupyter (``_repr_html_``): manifests, acquisition results, verification reports
and disk-image descriptions as plain tables.

Every value shown may come from an untrusted source (file names, VM names, guest facts), so every
value is escaped; nothing here runs scripts or loads anything from the network.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmforensics.custody.ledger import CustodyEvent
    from vmforensics.custody.models import Manifest, VMIdentity
    from vmforensics.custody.verify import VerificationReport
    from vmforensics.images.base import ImageInfo

log = logging.getLogger(__name__)

_GOOD = {"OK", "VALID", "VERIFIED", "ok", "sealed"}
_BAD = {"MISMATCH", "MISSING", "EXTRA", "UNSAFE", "INVALID", "BROKEN", "FAILED"}
_STYLE = "border-collapse:collapse;margin:0.3em 0"
_CELL = "text-align:left;vertical-align:top;padding:0.15em 0.6em"
#: Custody timelines longer than this show their first and last events only.
TIMELINE_LIMIT = 200


# --- building blocks -------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, css_class: str = "") -> str:
    head = "".join(f"<th style='{_CELL}'>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='{_CELL}'>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    cls = f" class='{escape(css_class)}'" if css_class else ""
    return f"<table{cls} style='{_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(rows: Iterable[tuple[str, Any]], *, css_class: str = "") -> str:
    """A two-column table of label / value, leaving out what is unknown."""
    kept = [(f"<b>{escape(label)}</b>", value) for label, value in rows if value not in (None, "", [], {})]
    body = "".join(
        f"<tr><th style='{_CELL}'>{label}</th><td style='{_CELL}'>{_cell(v)}</td></tr>" for label, v in kept
    )
    cls = f" class='{escape(css_class)}'" if css_class else ""
    return f"<table{cls} style='{_STYLE}'><tbody>{body}</tbody></table>"


class _Raw(str):
    """Markup built here from escaped parts: inserted as is."""


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if value is None:
        return "<span style='color:#888'>—</span>"
    if isinstance(value, bool):
        value = "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        value = _compact(value)
    text = escape(str(value))
    if str(value) in _GOOD:
        return f"<b style='color:#1a7f37'>{text}</b>"
    if str(value) in _BAD or str(value).startswith("failed"):
        return f"<b style='color:#cf222e'>{text}</b>"
    return text


def _code(text: str, *, title: str | None = None) -> _Raw:
    tip = f" title='{escape(title)}'" if title else ""
    return _Raw(f"<code{tip}>{escape(text)}</code>")


def _digest(value: str | None) -> _Raw | None:
    """A hash shown in full (so it can be copied) in a monospace cell."""
    return None if value is None else _code(value)


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def size_text(n: int | None) -> str | None:
    """Bytes as a short human figure (KiB, MiB...), exact below 1 KiB."""
    if n is None:
        return None
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n:,} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _heading(text: str, level: int = 4) -> str:
    return f"<h{level} style='margin:0.6em 0 0.2em'>{escape(text)}</h{level}>"


# --- manifest and acquisition ----------------------------------------------------------------------


def manifest_html(
    manifest: Manifest,
    *,
    events: Sequence[CustodyEvent] | None = None,
    report: VerificationReport | None = None,
) -> str:
    """The manifest as tables: case, VM identity, clock, files (with verification status when a
    report is given), actions on the source, omissions, integrity and the custody timeline."""
    parts = [
        "<div class='vmforensics-manifest'>",
        _heading(f"Acquisition {manifest.acquisition_id}"),
        _case_facts(manifest),
        _heading("Source and VM identity", 5),
        _vm_facts(manifest),
        _heading("Clock", 5),
        _clock_facts(manifest),
        _files_table(manifest, report),
    ]
    if manifest.phases:
        rows = [(p.name, p.started, p.finished, p.outcome) for p in manifest.phases]
        parts += [_heading("Phases", 5), _table(["phase", "started", "finished", "outcome"], rows)]
    if manifest.actions:
        rows = [
            (a.action, a.parameters, a.started, a.finished, a.outcome, a.details) for a in manifest.actions
        ]
        parts += [
            _heading("Changes made on the source", 5),
            _table(["action", "parameters", "started", "finished", "outcome", "details"], rows),
        ]
    if manifest.omissions:
        rows = [(o.source_path, o.role, o.reason) for o in manifest.omissions]
        parts += [_heading(f"Not acquired ({len(rows)})", 5), _table(["source", "role", "reason"], rows)]
    parts += [_heading("Integrity", 5), _integrity_facts(manifest)]
    if events is not None:
        parts.append(timeline_html(events))
    parts.append("</div>")
    return "".join(parts)


def _case_facts(manifest: Manifest) -> str:
    case = manifest.case
    host = manifest.examiner_host
    return _facts(
        [
            ("case", case.case_id),
            ("evidence / exhibit", case.evidence_id),
            ("examiner", case.examiner),
            ("description", case.description),
            ("authority", case.authority),
            ("notes", case.notes),
            ("started", manifest.started),
            ("finished", manifest.finished),
            ("tool", f"{manifest.tool.name} {manifest.tool.version}"),
            ("examiner host", f"{host.fqdn or host.hostname} ({host.os}), user {host.user}"),
            ("command line", _code(" ".join(host.command_line)) if host.command_line else None),
        ],
        css_class="vmforensics-case",
    )


def _vm_facts(manifest: Manifest) -> str:
    source = manifest.source
    vm: VMIdentity | None = source.vm
    rows: list[tuple[str, Any]] = [
        ("source", f"{source.kind} {source.host or ''}".strip()),
        ("product", source.product),
        ("connection", source.connection),
    ]
    if vm is not None:
        rows += [
            ("VM", vm.name),
            ("BIOS UUID", vm.uuid),
            ("instance UUID", vm.instance_uuid),
            ("reference", vm.reference),
            ("configuration", vm.config_path),
            ("MAC addresses", ", ".join(vm.mac_addresses)),
            ("host / cluster / datacenter", " / ".join(x for x in (vm.host, vm.cluster, vm.datacenter) if x)),
            ("datastores", ", ".join(vm.datastores)),
            ("power state before", vm.power_state_before),
            ("power state after", vm.power_state_after),
            ("reported by the guest (unverified)", vm.guest_reported),
            ("history", list(vm.history)),
            ("details", vm.details),
        ]
    return _facts(rows, css_class="vmforensics-vm")


def _clock_facts(manifest: Manifest) -> str:
    clock = manifest.clock
    if clock is None:
        return "<p>no clock reading</p>"
    skew = None if clock.skew_seconds is None else f"{clock.skew_seconds:+.3f} s (source minus examiner)"
    rtt = None if clock.round_trip_seconds is None else f"{clock.round_trip_seconds:.6f} s"
    return _facts(
        [
            ("examiner UTC", clock.examiner_utc),
            ("source UTC", clock.source_utc),
            ("skew", skew if skew else "not measured"),
            ("round trip", rtt),
            ("method", clock.method),
        ],
        css_class="vmforensics-clock",
    )


def _files_table(manifest: Manifest, report: VerificationReport | None) -> str:
    statuses = {f.path: f.status for f in report.files} if report is not None else {}
    algorithms = sorted({name for f in manifest.files for name in f.hashes}, key=lambda a: (a != "sha256", a))
    rows = []
    for f in manifest.files:
        status = statuses.get(f.local_path, "not checked") if report is not None else "sealed"
        notes = list(f.notes)
        if f.changed_during_acquisition:
            notes.insert(0, "changed during acquisition")
        if f.remote_hash is not None and f.remote_hash.matched is False:
            notes.insert(0, "remote hash differs")
        rows.append(
            [
                _code(f.local_path, title=f.source_path),
                f.role,
                _Raw(f"<span title='{f.size:,} bytes'>{escape(size_text(f.size) or '')}</span>"),
                *(_digest(f.hashes.get(a)) for a in algorithms),
                status,
                "; ".join(notes) or None,
            ]
        )
    total = f"{len(manifest.files)} files, {size_text(manifest.total_bytes)}"
    headers = ["file", "role", "size", *algorithms, "status", "notes"]
    return _heading(f"Files ({total})", 5) + _table(headers, rows, css_class="vmforensics-files")


def _integrity_facts(manifest: Manifest) -> str:
    integrity = manifest.integrity
    return _facts(
        [
            ("ledger head", _digest(integrity.ledger_head)),
            ("ledger events", integrity.ledger_events),
            ("signer key", _code(integrity.signer_key_id) if integrity.signer_key_id else None),
            ("signature algorithm", integrity.signature_algorithm),
            ("schema version", manifest.schema_version),
        ],
        css_class="vmforensics-integrity",
    )


def timeline_html(events: Sequence[CustodyEvent], limit: int = TIMELINE_LIMIT) -> str:
    """The custody ledger as a timeline table (long ledgers: the first and last events)."""
    shown: list[CustodyEvent | None] = list(events)
    if len(events) > limit:
        shown = [*events[: limit // 2], None, *events[-(limit // 2) :]]
    rows = [
        (e.seq, e.time, e.action, _event_summary(e.details)) if e is not None else ("…", None, "…", None)
        for e in shown
    ]
    return _heading(f"Custody timeline ({len(events)} events)", 5) + _table(
        ["#", "time (UTC)", "action", "details"], rows, css_class="vmforensics-timeline"
    )


def _event_summary(details: dict[str, Any]) -> str:
    interesting = {k: v for k, v in details.items() if k not in ("case", "command_line", "hashes")}
    return ", ".join(
        f"{k}={_compact(v, 80) if not isinstance(v, str) else v}" for k, v in interesting.items()
    )


def _ledger_events(path: Path) -> list[CustodyEvent] | None:
    from vmforensics.custody.ledger import LEDGER_NAME, CustodyEvent

    try:
        return [CustodyEvent(**json.loads(line)) for line in (path / LEDGER_NAME).read_bytes().splitlines()]
    except (OSError, ValueError, TypeError) as exc:
        log.warning("custody timeline unavailable: %s", exc)
        return None


def result_html(path: Path, duration: float, manifest: Manifest) -> str:
    """An acquisition result: where the evidence is, how long it took, the manifest and its ledger."""
    head = (
        f"<p>Evidence in <code>{escape(str(path))}</code>, acquired in {duration:.1f} s. "
        f"Re-prove it with <code>vmforensics.verify({escape(repr(str(path)))})</code>.</p>"
    )
    return head + manifest_html(manifest, events=_ledger_events(Path(path)))


# --- verification ----------------------------------------------------------------------------------


def verification_html(report: VerificationReport) -> str:
    """A verification report: the verdict, each check, every file's status, and the problems."""
    verdict = report.verdict  # says what authenticity rests on (pinned key, or integrity only)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items())) or "none"
    facts = _facts(
        [
            ("result", verdict),
            ("acquisition", report.acquisition_id),
            ("verified at", report.verified_at),
            ("manifest", report.manifest_status),
            ("signature", report.signature_status),
            ("key", _code(f"{report.key_id} ({report.key_source})") if report.key_id else None),
            ("ledger", _Raw(f"{_cell(report.ledger_status)} ({report.ledger_events} events)")),
            ("files", counts),
        ],
        css_class="vmforensics-verification",
    )
    rows = [
        (_code(f.path), f.status, size_text(f.expected_size), size_text(f.actual_size), f.detail or None)
        for f in sorted(report.files, key=lambda f: (f.status == "OK", f.path))
    ]
    problems = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
    return (
        "<div class='vmforensics-report'>"
        + _heading(f"Verification of {report.path}: {verdict}")
        + facts
        + _table(
            ["file", "status", "expected size", "size on disk", "detail"], rows, css_class="vmforensics-files"
        )
        + (_heading("Problems", 5) + f"<ul>{problems}</ul>" if problems else "")
        + "</div>"
    )


# --- disk images -----------------------------------------------------------------------------------


def image_info_html(info: ImageInfo) -> str:
    """A disk image's description: format, size, allocation, and each layer of its chain."""
    rows = [
        (
            depth,
            _code(layer.path),
            layer.format if layer.subtype == layer.format else f"{layer.format} {layer.subtype}",
            size_text(layer.size),
            size_text(layer.allocated),
            layer.identifiers,
            _Raw("<br>".join(escape(name) for name in layer.files[1:])) if layer.files[1:] else None,
        )
        for depth, layer in enumerate(info.chain)
    ]
    warnings = "".join(f"<li>{escape(w)}</li>" for w in info.all_warnings)
    return (
        "<div class='vmforensics-image'>"
        + _heading(f"Disk image {info.path}")
        + _facts(
            [
                ("format", info.format if info.subtype == info.format else f"{info.format} {info.subtype}"),
                ("virtual size", f"{size_text(info.size)} ({info.size:,} bytes)"),
                ("allocated in this layer", size_text(info.allocated)),
                ("layers", len(rows)),
            ]
        )
        + _table(
            ["layer", "file", "format", "size", "allocated", "identifiers", "other files"],
            rows,
            css_class="vmforensics-chain",
        )
        + (_heading("Warnings", 5) + f"<ul>{warnings}</ul>" if warnings else "")
        + "</div>"
    )
