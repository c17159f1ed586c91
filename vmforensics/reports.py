"""HTML views for Jupyter: manifests, acquisition results and verification reports as tables."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmforensics.acquire.base import AcquisitionResult
    from vmforensics.custody.models import Manifest
    from vmforensics.custody.verify import VerificationReport

_STATUS_COLOURS = {"OK": "#1a7f37", "VALID": "#1a7f37", "VERIFIED": "#1a7f37"}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "<span style='color:#888'>—</span>"
    text = escape(str(value))
    colour = _STATUS_COLOURS.get(str(value))
    if colour is None and str(value) in (
        "MISMATCH",
        "MISSING",
        "EXTRA",
        "UNSAFE",
        "INVALID",
        "BROKEN",
        "FAILED",
    ):
        colour = "#cf222e"
    return f"<b style='color:{colour}'>{text}</b>" if colour else text


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def manifest_html(manifest: Manifest) -> str:
    vm = manifest.source.vm
    facts = [
        ["case", manifest.case.case_id],
        ["examiner", manifest.case.examiner],
        ["acquisition", manifest.acquisition_id],
        ["source", f"{manifest.source.kind} {manifest.source.host or ''}".strip()],
        ["VM", vm.name if vm else None],
        ["VM UUID", vm.uuid if vm else None],
        ["MACs", ", ".join(vm.mac_addresses) if vm else None],
        ["clock skew (s)", manifest.clock.skew_seconds if manifest.clock else None],
        ["started / finished", f"{manifest.started} / {manifest.finished}"],
        ["signer", manifest.integrity.signer_key_id],
        ["ledger head", manifest.integrity.ledger_head],
    ]
    files = [[f.local_path, f.role, _size(f.size), f.hashes.get("sha256")] for f in manifest.files]
    parts = [
        "<h4>vmforensics manifest</h4>",
        _table(["", ""], facts),
        f"<h5>{len(manifest.files)} files, {_size(manifest.total_bytes)}</h5>",
        _table(["file", "role", "size", "sha256"], files),
    ]
    if manifest.actions:
        rows = [[a.action, a.parameters, a.started, a.outcome] for a in manifest.actions]
        parts += [
            "<h5>actions on the source</h5>",
            _table(["action", "parameters", "started", "outcome"], rows),
        ]
    if manifest.omissions:
        rows = [[o.source_path, o.role, o.reason] for o in manifest.omissions]
        parts += ["<h5>not acquired</h5>", _table(["source", "role", "reason"], rows)]
    return "".join(parts)


def result_html(result: AcquisitionResult) -> str:
    return (
        f"<p>Evidence in <code>{escape(str(result.path))}</code>, {result.duration:.1f} s</p>"
        + manifest_html(result.manifest)
    )


def verification_html(report: VerificationReport) -> str:
    facts = [
        ["result", "VERIFIED" if report.ok else "FAILED"],
        ["manifest", report.manifest_status],
        ["signature", report.signature_status],
        ["key", f"{report.key_id} ({report.key_source})" if report.key_id else None],
        ["ledger", f"{report.ledger_status} ({report.ledger_events} events)"],
    ]
    rows = [[f.path, f.status, _size(f.expected_size), _size(f.actual_size), f.detail] for f in report.files]
    problems = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
    return (
        f"<h4>verification of {escape(report.path)}</h4>"
        + _table(["", ""], facts)
        + _table(["file", "status", "expected", "on disk", "detail"], rows)
        + (f"<ul>{problems}</ul>" if problems else "")
    )
