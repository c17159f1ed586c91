"""The vSphere API session: login with explicit TLS, property retrieval, task polling, faults.

Properties are always read through the PropertyCollector (one round trip for many properties;
pyVmomi's attribute accessors fetch one property at a time and make some servers fail on unset
ones). Tasks are waited for by polling ``info`` through the PropertyCollector as well.

Objects vanish between two calls (a datastore unmounted, a VM unregistered, a snapshot removed;
a standalone ESXi even lists references that no longer exist): one retrieval over many objects
asks the server to report missing objects instead of failing as a whole, so a missing object
drops only itself (:func:`vanished` names them); :func:`properties` of one object that no longer
exists raises :class:`ObjectVanishedError`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    ObjectVanishedError,
    SourceError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
PC = vmodl.query.PropertyCollector


def login(host: str, port: int, user: str, password: str, context: ssl.SSLContext, timeout: float) -> Any:
    """A ServiceInstance logged in as ``user``; TLS always checked by ``context``."""
    try:
        return SmartConnect(
            host=host,
            port=port,
            user=user,
            pwd=password,
            sslContext=context,
            httpConnectionTimeout=timeout,
            disableSslCertValidation=False,
        )
    except vim.fault.InvalidLogin as exc:
        raise AuthenticationError(f"{host}:{port} refused the user name or password for {user!r}") from exc
    except ssl.SSLError as exc:
        raise HostVerificationError(
            f"the TLS certificate of {host}:{port} was refused: {exc} "
            "(give --tls-ca with a CA bundle, or --tls-thumbprint with the certificate's SHA-256)"
        ) from exc
    except vim.fault.HostConnectFault as exc:
        raise HostVerificationError(f"{host}:{port}: {exc.msg or exc}") from exc
    except vmodl.MethodFault as exc:
        raise ConnectionError_(f"{host}:{port}: login failed: {fault_text(exc)}") from exc
    except OSError as exc:
        raise ConnectionError_(f"cannot reach the vSphere API at {host}:{port}: {exc}") from exc


def logout(si: Any) -> None:
    with contextlib.suppress(Exception):
        Disconnect(si)


def fault_text(exc: BaseException) -> str:
    """A readable line for a vSphere fault (pyVmomi's str() is a multi-line dump)."""
    if isinstance(exc, vim.fault.NoPermission):
        return f"permission denied: privilege {exc.privilegeId!r} is needed on {exc.object}"
    message = getattr(exc, "msg", None) or ""
    name = type(exc).__name__
    return f"{name}: {message}".rstrip(": ") if message else name


@contextlib.contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Turn vSphere faults and dropped connections into vmforensics errors naming ``action``."""
    try:
        yield
    except vim.fault.NoPermission as exc:
        raise SourceError(
            f"{action}: {fault_text(exc)} (see docs/vmware.md for the required privileges)"
        ) from exc
    except vim.fault.NotAuthenticated as exc:
        raise AuthenticationError(f"{action}: the API session is no longer valid") from exc
    except vmodl.fault.ManagedObjectNotFound as exc:
        gone = moref(exc.obj) if exc.obj is not None else "an object"
        raise ObjectVanishedError(
            f"{action}: {gone} no longer exists on the server (removed since it was listed)", reference=gone
        ) from exc
    except vmodl.MethodFault as exc:
        raise SourceError(f"{action}: {fault_text(exc)}") from exc
    except OSError as exc:
        raise ConnectionError_(f"{action}: the connection to the vSphere API failed: {exc}") from exc


def retrieve(
    si: Any, objects: Sequence[Any], kind: type, paths: Sequence[str], *, container: Any = None
) -> list[tuple[Any, dict[str, Any]]]:
    """``[(managed object, {path: value})]`` for ``objects`` (or every ``kind`` in ``container``).

    Unset properties are simply absent from the dict. Objects that no longer exist are left out
    (the server reports them instead of failing the whole retrieval; see :func:`vanished`).
    """
    content = si.content
    collector = content.propertyCollector
    view = None
    if container is not None:
        view = content.viewManager.CreateContainerView(container, [kind], True)
        traverse = PC.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
        object_specs = [PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])]
    else:
        object_specs = [PC.ObjectSpec(obj=obj, skip=False) for obj in objects]
    spec = PC.FilterSpec(
        objectSet=object_specs,
        propSet=[PC.PropertySpec(type=kind, pathSet=list(paths))],
        reportMissingObjectsInResults=True,
    )
    found: list[tuple[Any, dict[str, Any]]] = []
    try:
        result = collector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
        while result is not None:
            for item in result.objects:
                if not item.propSet and is_gone(item.missingSet):
                    continue
                found.append((item.obj, {prop.name: prop.val for prop in item.propSet or ()}))
            result = collector.ContinueRetrievePropertiesEx(result.token) if result.token else None
    finally:
        if view is not None:
            with contextlib.suppress(Exception):
                view.DestroyView()
    return found


def is_gone(missing: Sequence[Any] | None) -> bool:
    """Whether a result's missingSet says the object itself no longer exists."""
    return any(isinstance(entry.fault, vmodl.fault.ManagedObjectNotFound) for entry in missing or ())


def vanished(objects: Sequence[Any], found: Sequence[tuple[Any, dict[str, Any]]]) -> list[str]:
    """The morefs of ``objects`` that :func:`retrieve` did not return: they no longer exist."""
    returned = {moref(obj) for obj, _ in found}
    return list(dict.fromkeys(moref(obj) for obj in objects if moref(obj) not in returned))


def properties(si: Any, obj: Any, paths: Sequence[str]) -> dict[str, Any]:
    """The ``paths`` of one managed object (absent when unset); ObjectVanishedError if it is gone."""
    found = retrieve(si, [obj], type(obj), paths)
    if not found:
        raise ObjectVanishedError(
            f"{type(obj).__name__.rsplit('.', 1)[-1]} {moref(obj)} no longer exists on the server "
            "(removed since it was listed)",
            reference=moref(obj),
        )
    return found[0][1]


def wait_for_task(si: Any, task: Any, action: str, *, timeout: float = 3600.0) -> Any:
    """Poll the task's ``info`` until it succeeds (its result) or fails (SourceError)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        with api_errors(action):  # not "info" whole: some servers put a non-entity in info.entity
            try:
                info = properties(si, task, ["info.state", "info.error", "info.result"])
            except ObjectVanishedError as exc:
                raise SourceError(f"{action}: task {task._moId} vanished before it finished") from exc
        state = info.get("info.state")
        if state == vim.TaskInfo.State.success:
            return info.get("info.result")
        if state == vim.TaskInfo.State.error:
            error = info.get("info.error")
            raise SourceError(
                f"{action}: task {task._moId} failed: {fault_text(error) if error else 'no reason given'}"
            )
        if time.monotonic() > deadline:
            raise SourceError(f"{action}: task {task._moId} still {state} after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def run_task(si: Any, start: Callable[[], Any], action: str, **options: Any) -> tuple[str, Any]:
    """Start a task and wait for it: ``(task id, result)``."""
    with api_errors(action):
        task = start()
    return task._moId, wait_for_task(si, task, action, **options)


def moref(obj: Any) -> str:
    """``vm-42`` style identifier of a managed object."""
    return str(obj._moId)
