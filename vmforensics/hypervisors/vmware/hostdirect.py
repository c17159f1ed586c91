"""On vCenter, datastore files straight from the ESXi host that mounts them, its certificate pinned.

vCenter's own ``/folder`` proxies every byte through the vCenter appliance. The host serves the same
``/folder`` to a client holding a *generic service ticket*: a one-time credential vCenter issues
(``SessionManager.AcquireGenericServiceTicket``) for one method on one URL, presented as the cookie
``vmware_cgi_ticket``. So every request (HEAD for a stat, GET for the bytes, another GET to resume)
gets its own ticket. The host's TLS certificate is pinned to what vCenter records for it
(``config.certificate``, else ``summary.config.sslThumbprint``, else the ticket's ``sslThumbprint``)
or to a pin the examiner gives. When no pin is known, no address of the host answers with the
pinned certificate, the ticket call is not supported, or the host refuses a request, the file comes
through vCenter's ``/folder`` instead; each file's record says which endpoint served it and how
that endpoint's certificate was checked.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import attrs
from pyVmomi import vim, vmodl

from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    ObjectVanishedError,
    SourceError,
    UsageError,
)
from vmforensics.hypervisors.vmware.api import fault_text, moref, properties, retrieve
from vmforensics.hypervisors.vmware.tls import normalize_thumbprint, peer_certificate
from vmforensics.transport.base import ReadStream, RemoteStat, Transport
from vmforensics.transport.https import HTTPSDatastoreTransport

log = logging.getLogger(__name__)

#: ESXi's datacenter path: a host knows only its own.
HOST_DATACENTER = "ha-datacenter"
HOST_HTTPS_PORT = 443
#: How long an address of the host may take to answer the certificate probe.
PROBE_TIMEOUT = 10.0
_HOST_PATHS = (
    "name",
    "runtime.connectionState",
    "datastore",
    "summary.config.sslThumbprint",
    "config.certificate",
    "config.virtualNicManagerInfo.netConfig",
)
#: Failures of the host path that send a file through vCenter instead.
FALLBACK_ERRORS = (ConnectionError_, AuthenticationError, HostVerificationError, SourceError)


@attrs.frozen
class HostEndpoint:
    """An ESXi host's ``/folder`` service that answered with the pinned certificate."""

    name: str  # the host's inventory name
    reference: str  # its moref
    ticket_host: str  # the host part of URLs in ticket requests (as vCenter knows the host)
    address: str  # where the examiner's machine reaches it
    port: int
    thumbprint: str  # lowercase hex, SHA-256 (64) or SHA-1 (40)
    thumbprint_source: str

    @property
    def verification(self) -> str:
        algorithm = "SHA-256" if len(self.thumbprint) == 64 else "SHA-1"
        return f"pinned {algorithm} thumbprint ({self.thumbprint_source})"

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": "esxi-host",
            "host": self.name,
            "host_reference": self.reference,
            "url": f"https://{_netloc(self.address, self.port)}/folder",
            "verification": self.verification,
            "tls_thumbprint_pinned": self.thumbprint,
            "credential": "a vCenter generic service ticket per request (cookie vmware_cgi_ticket)",
        }


def certificate_thumbprint(value: Any) -> str | None:
    """SHA-256 of a PEM certificate as vSphere returns ``config.certificate`` (bytes or signed ints)."""
    if not value:
        return None
    raw = bytes(b & 0xFF for b in value) if not isinstance(value, (bytes, bytearray)) else bytes(value)
    try:
        der = ssl.PEM_cert_to_DER_cert(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def recorded_thumbprint(props: Mapping[str, Any]) -> tuple[str, str] | None:
    """The host's certificate digest as vCenter records it, and where it came from."""
    from_certificate = certificate_thumbprint(props.get("config.certificate"))
    if from_certificate:
        return from_certificate, "the certificate vCenter holds for the host (config.certificate)"
    text = props.get("summary.config.sslThumbprint")
    if text:
        try:
            return normalize_thumbprint(str(text)), "vCenter's summary.config.sslThumbprint of the host"
        except UsageError:
            log.warning("unusable sslThumbprint %r for a host", text)
    return None


def management_addresses(net_config: Any) -> list[str]:
    """IP addresses of the host's selected management VMkernel adapters."""
    found: list[str] = []
    for config in net_config or ():
        if getattr(config, "nicType", None) != "management":
            continue
        selected = set(getattr(config, "selectedVnic", None) or ())
        for vnic in getattr(config, "candidateVnic", None) or ():
            address = getattr(getattr(getattr(vnic, "spec", None), "ip", None), "ipAddress", None)
            if vnic.key in selected and address and _is_ip(address) and address not in found:
                found.append(address)
    return found


class HostLocator:
    """Finds, for one datastore, the VM's ESXi host (or another that mounts it) and a pinned endpoint."""

    def __init__(
        self,
        si: Any,
        vm_host: Any,
        *,
        pins: Mapping[str, str] | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
    ):
        self.si = si
        self.vm_host = vm_host
        self.pins = {name: normalize_thumbprint(value) for name, value in (pins or {}).items()}
        self.probe_timeout = probe_timeout

    def locate(self, datastore: Any, name: str) -> tuple[HostEndpoint | None, str]:
        """``(endpoint, how it was chosen)`` or ``(None, why the host cannot be used)`` for datastore ``name``."""
        try:
            host, props = self._host_for(datastore)
        except (vmodl.MethodFault, OSError) as exc:
            return None, f"the hosts mounting the datastore could not be read: {fault_text(exc)}"
        except ObjectVanishedError as exc:
            return None, str(exc)
        if host is None:
            return None, props.get("reason", "no connected host mounts the datastore")
        host_name = str(props.get("name") or moref(host))
        pin = self._pin(host_name, props)
        addresses = management_addresses(props.get("config.virtualNicManagerInfo.netConfig"))
        ticket_host = addresses[0] if addresses else host_name
        query = urlencode({"dcPath": HOST_DATACENTER, "dsName": name})
        try:  # also tells whether vCenter issues tickets at all, and may carry the host's name and pin
            ticket = self.ticket(f"https://{ticket_host}/folder/?{query}", "httpGet")
        except SourceError as exc:
            return None, str(exc)
        if pin is None and ticket.sslThumbprint:
            try:
                pin = (
                    normalize_thumbprint(ticket.sslThumbprint),
                    "the sslThumbprint of vCenter's service ticket",
                )
            except UsageError:
                log.warning(
                    "host %s: unusable sslThumbprint %r in the ticket", host_name, ticket.sslThumbprint
                )
        if pin is None:
            return None, f"vCenter holds no usable certificate thumbprint for host {host_name}"
        candidates = [(a, HOST_HTTPS_PORT) for a in addresses]
        if ticket.hostName and ticket.hostName.split(":")[0] not in ("localhost.localdomain", "localhost"):
            candidates.append(_split_netloc(ticket.hostName))
        candidates.append((host_name, HOST_HTTPS_PORT))
        refusals = []
        for address, port in dict.fromkeys(candidates):
            problem = self._probe(address, port, pin[0])
            if problem is None:
                endpoint = HostEndpoint(host_name, moref(host), ticket_host, address, port, *pin)
                return endpoint, f"{address}:{port} presented the certificate pinned by {pin[1]}"
            refusals.append(f"{_netloc(address, port)}: {problem}")
        return None, f"host {host_name} not usable at any address: " + "; ".join(refusals)

    def ticket(self, url: str, method: str) -> Any:
        """A one-time generic service ticket for ``method`` on ``url``; SourceError if refused."""
        spec = vim.SessionManager.HttpServiceRequestSpec(method=method, url=url)
        try:
            return self.si.content.sessionManager.AcquireGenericServiceTicket(spec=spec)
        except (vmodl.MethodFault, OSError) as exc:
            raise SourceError(f"vCenter issued no service ticket: {fault_text(exc)}") from exc

    def _host_for(self, datastore: Any) -> tuple[Any, dict[str, Any]]:
        """The VM's host when it mounts ``datastore``, else the first connected host that does."""
        mounts = properties(self.si, datastore, ["host"]).get("host") or []
        mounted = {
            moref(m.key): m.key for m in mounts if getattr(m.mountInfo, "accessible", True) is not False
        }
        candidates = {moref(self.vm_host): self.vm_host} if self.vm_host is not None else {}
        candidates.update(mounted)
        if not candidates:
            return None, {"reason": "the datastore lists no host that mounts it"}
        facts = {
            moref(h): p for h, p in retrieve(self.si, list(candidates.values()), vim.HostSystem, _HOST_PATHS)
        }
        wanted = moref(datastore)
        for reference, host in candidates.items():
            props = facts.get(reference, {})
            has_it = reference in mounted or wanted in {moref(d) for d in props.get("datastore", [])}
            if has_it and props.get("runtime.connectionState") == "connected":
                return host, props
        return None, {"reason": "no connected host mounts the datastore"}

    def _pin(self, name: str, props: Mapping[str, Any]) -> tuple[str, str] | None:
        recorded = recorded_thumbprint(props)
        given = self.pins.get(name)
        if given is None:
            return recorded
        if recorded is not None and len(recorded[0]) == len(given) and recorded[0] != given:
            log.warning("host %s: the examiner's pin differs from vCenter's record (%s)", name, recorded[1])
        return given, "the examiner's pin for this host"

    def _probe(self, address: str, port: int, thumbprint: str) -> str | None:
        """None when ``address:port`` presents the pinned certificate, else what went wrong."""
        try:
            der = peer_certificate(address, port, self.probe_timeout)
        except (ConnectionError_, HostVerificationError) as exc:
            return str(exc)
        algorithm = "sha256" if len(thumbprint) == 64 else "sha1"
        seen = hashlib.new(algorithm, der).hexdigest()
        return None if seen == thumbprint else f"presented {algorithm} {seen}, not the pinned {thumbprint}"


class HostTicketTransport(Transport):
    """One datastore on one ESXi host: every request with a fresh ticket, the certificate pinned."""

    scheme = "https"

    def __init__(
        self, endpoint: HostEndpoint, datastore: str, ticket: Callable[[str, str], Any], timeout: float
    ):
        self.endpoint = endpoint
        self.datastore = datastore
        self._ticket = ticket
        self._timeout = timeout
        self._last: HTTPSDatastoreTransport | None = None

    def _with_ticket(self, path: str, method: str) -> HTTPSDatastoreTransport:
        relative = DatastoreRelative(self.datastore).of(path)
        query = urlencode({"dcPath": HOST_DATACENTER, "dsName": self.datastore})
        url = f"https://{self.endpoint.ticket_host}/folder/{quote(relative, safe='/')}?{query}"
        ticket = self._ticket(url, method)
        if self._last is not None:
            self._last.close()
        self._last = HTTPSDatastoreTransport(
            self.endpoint.address,
            port=self.endpoint.port,
            cookie=f"vmware_cgi_ticket={ticket.id}",
            datacenter=HOST_DATACENTER,
            datastore=self.datastore,
            tls_thumbprint=self.endpoint.thumbprint,
            timeout=self._timeout,
        )
        return self._last

    def stat(self, path: str) -> RemoteStat:
        return self._with_ticket(path, "httpHead").stat(path)

    def listdir(self, path: str) -> list[RemoteStat]:
        raise UsageError("folders are listed through vCenter (one ticket covers one request)")

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        return self._with_ticket(path, "httpGet").open_read(path, offset)

    def describe(self) -> dict[str, Any]:
        return self.endpoint.describe()

    def close(self) -> None:
        if self._last is not None:
            self._last.close()


@attrs.frozen
class DatastoreRelative:
    """``[datastore] dir/file`` -> ``dir/file`` for one datastore (others are refused)."""

    datastore: str

    def of(self, path: str) -> str:
        prefix = f"[{self.datastore}]"
        if path.startswith("["):
            if not path.startswith(prefix):
                raise UsageError(f"{path!r} is not on datastore {self.datastore!r}")
            path = path[len(prefix) :]
        return path.strip().lstrip("/")


class HostFirst(Transport):
    """The host's ``/folder`` when usable, vCenter's otherwise; remembers which served each file."""

    scheme = "https"

    def __init__(
        self,
        host: HostTicketTransport | None,
        vcenter: HTTPSDatastoreTransport,
        reason: str,
        record: Callable[..., None],
    ):
        self._host = host
        self._vcenter = vcenter
        self._reason = reason  # why the host was chosen, or why it could not be
        self._record = record
        self._by_file: dict[str, Transport] = {}
        self.routes: dict[str, list[dict[str, Any]]] = {}

    def _use(self, path: str, transport: Transport, why: str) -> None:
        self._by_file[path] = transport
        route = dict(self._endpoint(transport), reason=why)
        self.routes.setdefault(path, []).append(route)
        self._record("download-route", source=path, **route)

    def _endpoint(self, transport: Transport) -> dict[str, Any]:
        if transport is self._host and self._host is not None:
            endpoint = self._host.endpoint
            return {
                "endpoint": f"esxi-host {endpoint.name} https://{_netloc(endpoint.address, endpoint.port)}",
                "verification": endpoint.verification,
            }
        vcenter = self._vcenter
        return {
            "endpoint": f"vcenter https://{_netloc(vcenter.host, vcenter.port)}",
            "verification": vcenter.verification,
        }

    def _fall_back(self, path: str, exc: Exception, *, offset: int = 0) -> None:
        if isinstance(exc, ConnectionError_ | HostVerificationError):
            self._host = None  # unreachable or a different certificate: not again for other files
            self._reason = f"the host failed: {exc}"
        log.warning("%s: downloading through vCenter instead of the host: %s", path, exc)
        resumed = f" from byte {offset}" if offset else ""
        self._use(path, self._vcenter, f"host download failed{resumed}: {exc}")

    def stat(self, path: str) -> RemoteStat:
        current = self._by_file.get(path)
        if current is None:
            if self._host is None:
                self._use(path, self._vcenter, f"host download unavailable: {self._reason}")
            else:
                self._use(path, self._host, self._reason)
            current = self._by_file[path]
        if current is self._vcenter:
            return self._vcenter.stat(path)
        try:
            return current.stat(path)
        except FALLBACK_ERRORS as exc:
            self._fall_back(path, exc)
            return self._vcenter.stat(path)

    def listdir(self, path: str) -> list[RemoteStat]:
        return self._vcenter.listdir(path)

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        current = self._by_file.get(path) or self._host or self._vcenter
        if current is self._vcenter:
            return self._vcenter.open_read(path, offset)
        try:
            return current.open_read(path, offset)
        except FALLBACK_ERRORS as exc:
            self._fall_back(path, exc, offset=offset)
            return self._vcenter.open_read(path, offset)

    def reconnect(self) -> None:
        self._vcenter.reconnect()

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"download_from": "host", "vcenter": self._vcenter.describe()}
        if self._host is not None:
            facts["host"] = self._host.describe()
        facts["host_choice" if self._host is not None else "host_unavailable"] = self._reason
        return facts

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
        self._vcenter.close()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _netloc(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return host if port == HOST_HTTPS_PORT else f"{host}:{port}"


def _split_netloc(text: str) -> tuple[str, int]:
    parts = urlsplit(f"//{text}")
    try:
        return parts.hostname or text, parts.port or HOST_HTTPS_PORT
    except ValueError:
        return text, HOST_HTTPS_PORT
