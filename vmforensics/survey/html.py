"""The survey as HTML for Jupyter: a summary, the findings, and a VM table sortable by any column."""

from __future__ import annotations

import uuid
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmforensics.survey.models import SurveyReport

_SEVERITY_COLOURS = {"high": "#cf222e", "warning": "#9a6700", "info": "#0969da"}

#: Clicking a header sorts by that column (numbers as numbers), clicking again reverses.
_SORT_SCRIPT = """
<script>
function vmfSort(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const index = Array.from(th.parentNode.children).indexOf(th);
  const ascending = th.dataset.order !== 'asc';
  th.parentNode.querySelectorAll('th').forEach(h => delete h.dataset.order);
  th.dataset.order = ascending ? 'asc' : 'desc';
  const key = row => row.children[index].dataset.sort ?? row.children[index].textContent;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}
</script>
"""


def _cell(value: Any) -> str:
    if value is None or value == []:
        return "<td data-sort=''><span style='color:#888'>—</span></td>"
    if isinstance(value, list):
        text = ", ".join(str(v) for v in value)
        return f"<td data-sort='{escape(text)}'>{escape(text)}</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float)):
        return f"<td data-sort='{value}' style='text-align:right'>{value:,}</td>"
    return f"<td>{escape(str(value))}</td>"


def sortable_table(headers: list[str], rows: list[list[Any]]) -> str:
    table_id = f"vmf-{uuid.uuid4().hex[:12]}"
    head = "".join(
        f"<th style='text-align:left;cursor:pointer' title='sort' onclick='vmfSort(this)'>{escape(h)}</th>"
        for h in headers
    )
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(report: SurveyReport) -> str:
    from vmforensics.survey.models import VM_COLUMNS

    source = f"{report.source.kind} {report.source.host or ''}".strip()
    parts = [
        f"<h4>Survey of {escape(source)} at {escape(report.taken)}</h4>",
        f"<p>{len(report.vms)} VMs, {len(report.hosts)} hosts, {len(report.unclaimed_files)} files no VM uses, "
        f"{len(report.findings)} findings.</p>",
    ]
    if report.findings:
        items = "".join(
            f"<li><b style='color:{_SEVERITY_COLOURS.get(f.severity, '#000')}'>{escape(f.severity)}</b> "
            f"[{escape(f.kind)}] {escape(f.explanation)}</li>"
            for f in report.findings
        )
        parts.append(f"<ul>{items}</ul>")
    rows = [[row[c] for c in VM_COLUMNS] for row in report.rows()]
    parts.append(_SORT_SCRIPT + sortable_table(list(VM_COLUMNS), rows))
    return "\n".join(parts)
