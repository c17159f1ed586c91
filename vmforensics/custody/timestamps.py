"""RFC 3161 timestamps over a sealed manifest: request, store, record, and the verify-time check.

After the seal, each TSA is asked for a token over the SHA-256 of the exact ``manifest.json``
bytes (with a nonce and certReq). The first reply is stored as ``manifest.json.tsr``, later ones
as ``manifest.json.2.tsr``, ``manifest.json.3.tsr`` … (the full TimeStampResp, as
``openssl ts -verify -in`` reads it), each with a ``timestamp`` ledger event after the seal naming
the TSA, the file, its SHA-256, genTime, serial and policy. A TSA that cannot be reached is a
``timestamp-failed`` event; the acquisition stays sealed, and ``vmforensics timestamp DIR --tsa
URL`` adds a token later. The manifest is never changed.

``verify(..., tsa_ca=PEM)`` proves each token (see :mod:`vmforensics.custody.tsp`) and requires
its genTime to lie in the acquisition window: no earlier than the manifest's ``started`` less
:data:`CLOCK_SKEW`, no later than its ``finished`` plus :data:`MAX_DELAY`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import stat
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody.ledger import CustodyEvent
from vmforensics.custody.models import Manifest
from vmforensics.custody.postseal import PostSealCheck, amend_sealed
from vmforensics.custody.seal import MANIFEST_NAME
from vmforensics.custody.tsp import MAX_REPLY_BYTES, TokenInfo, build_query, check_imprint, parse_reply
from vmforensics.errors import SigningKeyError, TimestampError, UsageError, VMForensicsError

log = logging.getLogger(__name__)

#: How far the TSA's clock may be behind the examiner host's clock at the start.
CLOCK_SKEW = dt.timedelta(minutes=5)
#: The latest genTime after the seal still inside the acquisition window (a token added later
#: with ``vmforensics timestamp`` after a TSA outage must come within this).
MAX_DELAY = dt.timedelta(hours=24)
REQUEST_TIMEOUT = 30.0
_TOKEN_NAME = re.compile(r"manifest\.json(?:\.([1-9][0-9]{0,3}))?\.tsr")


@attrs.frozen
class TimestampResult:
    """One TSA's outcome: the stored token's file and facts, or the error recorded instead."""

    tsa: str
    file: str | None = None
    info: TokenInfo | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        if self.info is None:
            return f"timestamp by {self.tsa} FAILED: {self.error}"
        return f"timestamp by {self.tsa} at {self.info.gen_time} (serial {self.info.serial}) -> {self.file}"


@attrs.frozen
class TimestampCheck(PostSealCheck):
    """The verdict on one ``timestamp`` event, with the TSA and genTime the verdict line names."""

    tsa: str = ""
    gen_time: str | None = None


def token_name(index: int) -> str:
    """The file of the ``index``-th token (1-based): manifest.json.tsr, manifest.json.2.tsr, …"""
    return "manifest.json.tsr" if index == 1 else f"manifest.json.{index}.tsr"


def public_url(url: str) -> str:
    """The URL as recorded: without user name, password, query or fragment (credentials never logged)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def request_token(url: str, data: bytes, *, timeout: float = REQUEST_TIMEOUT) -> tuple[bytes, TokenInfo]:
    """Ask the TSA at ``url`` for a token over SHA-256(data); the reply is checked against the query."""
    import requests

    check_tsa_urls(url)
    query, nonce = build_query(data)
    try:
        with requests.post(
            url,
            data=query,
            headers={"Content-Type": "application/timestamp-query"},
            timeout=timeout,
            stream=True,
        ) as response:
            if response.status_code != 200:
                raise TimestampError(f"the TSA answered HTTP {response.status_code} {response.reason}")
            body = response.raw.read(MAX_REPLY_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise TimestampError(f"cannot reach the TSA: {type(exc).__name__}: {_without_url(exc)}") from exc
    _, info = parse_reply(body)
    check_imprint(info, data)
    if info.nonce != str(nonce):
        raise TimestampError("the TSA's reply does not carry the query's nonce (a replayed reply?)")
    return body, info


def _without_url(exc: Exception) -> str:
    """The innermost reason of a requests error; its message would repeat the URL (credentials)."""
    reason: object = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the real error
    return str(reason).rsplit(": ", 1)[-1] if not isinstance(reason, str) else type(exc).__name__


def timestamp(
    directory: str | os.PathLike[str], tsa: str | Sequence[str], *, timeout: float = REQUEST_TIMEOUT
) -> tuple[TimestampResult, ...]:
    """Add an RFC 3161 token from each TSA to a sealed evidence directory (never raises for a TSA).

    Every outcome is a ledger event after the seal: ``timestamp`` with the stored token, or
    ``timestamp-failed`` with the reason. Returns one result per TSA, in order.
    """
    urls = check_tsa_urls(tsa)
    if not urls:
        raise UsageError("give at least one TSA URL")
    root = Path(directory)
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise UsageError(f"{root} is not a sealed evidence directory (no {MANIFEST_NAME})")
    data = manifest_path.read_bytes()
    replies: list[tuple[str, bytes | None, TokenInfo | None, str | None]] = []
    for url in urls:
        try:
            reply, info = request_token(url, data, timeout=timeout)
            replies.append((url, reply, info, None))
        except TimestampError as exc:
            log.warning("timestamp from %s failed: %s", public_url(url), exc)
            replies.append((url, None, None, str(exc)))
    results: list[TimestampResult] = []
    with amend_sealed(root) as amendment:
        index = _next_index(root)
        for url, reply, info, error in replies:
            shown = public_url(url)
            if reply is None or info is None:
                amendment.append("timestamp-failed", tsa=shown, error=error)
                results.append(TimestampResult(shown, error=error))
                continue
            name = token_name(index)
            index += 1
            with amendment.create(name) as f:
                f.write(reply)
            amendment.append(
                "timestamp",
                tsa=shown,
                file=name,
                sha256=hashlib.sha256(reply).hexdigest(),
                imprint=info.imprint,
                gen_time=info.gen_time,
                serial=info.serial,
                policy=info.policy,
                nonce=info.nonce,
            )
            results.append(TimestampResult(shown, name, info))
    return tuple(results)


def check_tsa_urls(tsa: str | Sequence[str]) -> tuple[str, ...]:
    """The TSA URLs as a tuple, each an http(s) URL with a host (checked before anything is done)."""
    urls = (tsa,) if isinstance(tsa, str) else tuple(tsa)
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"TSA URL {public_url(url)!r} is not an http(s) URL")
    return urls


def timestamp_after_seal(root: Path, urls: Sequence[str]) -> tuple[TimestampResult, ...]:
    """:func:`timestamp` for a directory just sealed: nothing raised, whatever fails is logged."""
    try:
        return timestamp(root, urls)
    except (VMForensicsError, OSError) as exc:
        log.error("the acquisition is sealed, but its timestamps could not be added: %s", exc)
        return tuple(TimestampResult(public_url(url), error=f"not recorded: {exc}") for url in urls)


def _next_index(root: Path) -> int:
    taken = [int(m.group(1) or 1) for p in root.iterdir() if (m := _TOKEN_NAME.fullmatch(p.name))]
    return max(taken, default=0) + 1


# --- the checker verify calls for each event after the seal ------------------------------------


def check_event(
    root: Path, event: CustodyEvent, manifest: Manifest, options: Mapping[str, Any]
) -> PostSealCheck:
    """Check one ``timestamp`` or ``timestamp-failed`` event (registered in POST_SEAL_CHECKERS).

    ``options["tsa_ca"]``: PEM file (or files) of the TSAs' CA; without it a token's signature is
    UNCHECKED, though its file, imprint and window are still checked.
    """
    details = event.details
    tsa = str(details.get("tsa", "?"))
    if event.action == "timestamp-failed":
        return PostSealCheck(
            event.action,
            "OK",
            f"no token from {tsa}: {details.get('error')} (add one with `vmforensics timestamp`)",
        )
    name = details.get("file")
    if not isinstance(name, str) or not _TOKEN_NAME.fullmatch(name):
        return TimestampCheck(
            event.action, "FAILED", f"event {event.seq} names no token file ({name!r})", tsa=tsa
        )
    problems: list[str] = []
    try:
        reply = _read_token(root / name)
        if hashlib.sha256(reply).hexdigest() != details.get("sha256"):
            raise TimestampError(f"{name} is not the token the ledger recorded (SHA-256 differs)")
        _, info = parse_reply(reply)
        check_imprint(info, (root / MANIFEST_NAME).read_bytes())
        recorded = {k: details.get(k) for k in ("gen_time", "serial", "policy")}
        actual = {"gen_time": info.gen_time, "serial": info.serial, "policy": info.policy}
        if recorded != actual:
            raise TimestampError(f"the ledger records {recorded} but the token says {actual}")
        problems += _window_problems(info, manifest)
    except (TimestampError, OSError) as exc:
        return TimestampCheck(
            event.action, "FAILED", f"token {name} from {tsa}: {exc}", (name,), (str(exc),), tsa=tsa
        )
    said = f"token {name} by {tsa} at {info.gen_time} (serial {info.serial}, policy {info.policy})"
    if problems:
        return TimestampCheck(
            event.action, "FAILED", said, (name,), tuple(problems), tsa=tsa, gen_time=info.gen_time
        )
    tsa_ca = options.get("tsa_ca")
    if tsa_ca is None:
        return TimestampCheck(
            event.action,
            "UNCHECKED",
            f"{said}: imprint matches; signature not checked (give --tsa-ca)",
            (name,),
            tsa=tsa,
            gen_time=info.gen_time,
        )
    from vmforensics.custody.tsp import verify_token

    try:
        roots = _roots(tsa_ca)
        _, subject = verify_token(reply, (root / MANIFEST_NAME).read_bytes(), roots)
    except (TimestampError, SigningKeyError) as exc:
        return TimestampCheck(
            event.action, "FAILED", said, (name,), (f"{name}: {exc}",), tsa=tsa, gen_time=info.gen_time
        )
    return TimestampCheck(
        event.action,
        "OK",
        f'{said}: signed by "{subject}" through the TSA CA',
        (name,),
        tsa=tsa,
        gen_time=info.gen_time,
    )


def _read_token(path: Path) -> bytes:
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise TimestampError(f"{path.name} is not a regular file")
    if info.st_size > MAX_REPLY_BYTES:
        raise TimestampError(f"{path.name} is {info.st_size} bytes: not a token")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_REPLY_BYTES + 1)


def _window_problems(info: TokenInfo, manifest: Manifest) -> list[str]:
    """genTime must fall between the start (less CLOCK_SKEW) and the seal (plus MAX_DELAY)."""
    gen = info.gen_datetime
    started = _parse_time(manifest.started)
    finished = _parse_time(manifest.finished)
    if started is not None and gen < started - CLOCK_SKEW:
        return [
            f"the token's genTime {info.gen_time} is before the acquisition started ({manifest.started}): "
            "a token made for something else, or a replayed one"
        ]
    if finished is not None and gen > finished + MAX_DELAY:
        return [
            f"the token's genTime {info.gen_time} is more than {MAX_DELAY} after the seal "
            f"({manifest.finished}): it proves the manifest existed only then"
        ]
    return []


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _roots(tsa_ca: Any) -> list:
    from vmforensics.custody.certificates import load_certificates

    sources: Iterable[Any] = [tsa_ca] if isinstance(tsa_ca, (str, bytes, os.PathLike)) else tsa_ca
    return [c for source in sources for c in load_certificates(source, what="TSA CA certificate")]


def first_verified(checks: Iterable[PostSealCheck]) -> dt.datetime | None:
    """genTime of the first proven timestamp among verify's post-seal checks."""
    for check in checks:
        if isinstance(check, TimestampCheck) and check.status == "OK" and check.gen_time:
            return _parse_time(check.gen_time)
    return None


def timestamp_anchors(checks: Iterable[PostSealCheck]) -> list[tuple[str, str]]:
    """(status, description) of each timestamp for the verdict: VERIFIED when proven through
    the TSA's CA, UNPINNED when only its imprint was checked, FAILED otherwise."""
    status = {"OK": "VERIFIED", "UNCHECKED": "UNPINNED"}
    note = {"UNCHECKED": " (token signature not checked: no TSA CA given)"}
    return [
        (
            status.get(c.status, "FAILED"),
            f"timestamp by {c.tsa} at {c.gen_time or '?'}{note.get(c.status, '')}",
        )
        for c in checks
        if isinstance(c, TimestampCheck)
    ]
