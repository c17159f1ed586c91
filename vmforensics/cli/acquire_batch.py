"""``vmforensics acquire-batch PLAN.json --out DIR (--local N | --scheduler tcp://…)``: a fleet."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vmforensics.cli.common import add_case_options, add_signing_options, case_from_args
from vmforensics.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "acquire-batch",
        help="acquire every VM a plan selects, on local threads or Dask workers, into one signed batch",
        description="PLAN.json is a `survey … --json` report (any hypervisor: it records how to "
        "connect, never a secret) or a batch plan naming surveys and connections (docs/fleet.md). "
        "Secrets are named (--password-env, --password-keyring, or per host in the plan) and read on "
        "the workers; the key passphrase too: set --key-passphrase-env's variable on every worker. "
        'Settings of the options file\'s [hosts."NAME"] table fill what a survey does not record.',
    )
    parser.add_argument("plan", help="the plan: a survey's JSON, or a batch plan")
    parser.add_argument(
        "--out", required=True, help="the batch directory (new or empty; existing with --resume)"
    )
    where = parser.add_argument_group("where the work runs (one of)")
    where.add_argument("--local", type=int, metavar="N", help="N acquisitions at once on this machine")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument(
        "--worker-root", metavar="DIR", help="where workers write the members (default: --out as they see it)"
    )
    secrets = parser.add_argument_group(
        "secrets (read on each worker, never sent to it; a batch plan may name them per host instead)"
    )
    place = secrets.add_mutually_exclusive_group()
    place.add_argument(
        "--password-env",
        metavar="VAR",
        help="the hosts' password is in this environment variable on every worker",
    )
    place.add_argument(
        "--password-keyring",
        action="store_true",
        help="the workers' keyring holds each host's password (service vmforensics:HOST, the survey's user)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-total", type=int, metavar="N", help="at most N acquisitions overall")
    limits.add_argument("--per-host", type=int, metavar="N", help="at most N at once per hypervisor host")
    limits.add_argument("--per-datastore", type=int, metavar="N", help="at most N at once per datastore")
    add_case_options(parser.add_argument_group("case"))
    signing = parser.add_argument_group("signing")
    add_signing_options(signing)
    signing.add_argument(
        "--cert",
        metavar="PEM",
        help="the examiner's certificate chain (leaf first) for the key, on every worker",
    )
    signing.add_argument("--pkcs11-module", metavar="SO", help="sign on a PKCS#11 token: the module library")
    signing.add_argument("--pkcs11-token", metavar="LABEL", help="the token's label (with --pkcs11-module)")
    signing.add_argument("--pkcs11-key", metavar="LABEL", help="the key's label (with --pkcs11-module)")
    how = parser.add_argument_group("acquisition")
    how.add_argument("--preserve", help="how to freeze each VM first (the acquirer's modes; default none)")
    how.add_argument("--hash", action="append", default=[], metavar="ALGO", help="extra hash besides sha256")
    how.add_argument(
        "--tsa", action="append", default=[], metavar="URL", help="RFC 3161 TSA for each member's manifest"
    )
    how.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="also read files a VM's own files name beneath DIR (a disk on another datastore); recorded",
    )
    how.add_argument(
        "--resume", action="store_true", help="rerun only the members the batch record has not sealed"
    )
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    how.add_argument("--json", action="store_true", help="print the batch record as JSON")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.acquire.batch import Limits, run_batch
    from vmforensics.acquire.batch_plan import plans_from_file
    from vmforensics.cli.config import config_path, load_hosts

    if (args.local is None) == (args.scheduler is None):
        raise UsageError("say where the work runs: --local N or --scheduler ADDRESS")
    plans = plans_from_file(
        args.plan, password=_password_source(args), host_defaults=load_hosts(config_path())
    )
    case = case_from_args(args)
    limits = Limits(
        total=args.local or args.max_total, per_host=args.per_host, per_datastore=args.per_datastore
    )
    options: dict[str, Any] = {"hashes": ("sha256", *args.hash), "tsa": tuple(args.tsa)}
    if args.preserve:
        options["preserve"] = args.preserve
    if args.allow_root:
        options["allowed_roots"] = tuple(args.allow_root)
    client = _client(args.scheduler) if args.scheduler else None
    try:
        result = run_batch(
            plans,
            args.out,
            case=case,
            executor=client.get_executor() if client is not None else None,
            limits=limits,
            signer=_key_ref(args),
            progress=not args.no_progress,
            resume=args.resume,
            worker_root=args.worker_root,
            **options,
        )
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(json.dumps(json.loads((result.path / "batch.json").read_bytes()), indent=2, sort_keys=True))
    else:
        sealed = len(result.items) - len(result.failed)
        print(f"batch {result.path}: {sealed}/{len(result.items)} sealed in {result.duration:.1f} s")
        print(f"  batch.json sha256 {result.record_sha256}")
        print("\n".join(f"  {item.outcome.upper()} {item.vm}: {item.error}" for item in result.failed))
    return 0 if result.ok else 1


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError as exc:
        raise UsageError("--scheduler needs Dask: pip install 'vmforensics[dask]'") from exc
    return Client(address)


def _password_source(args: argparse.Namespace) -> Any:
    """Where workers read the password a survey logged in with: one variable, or the keyring entry
    ``vmforensics:HOST`` for the survey's user (as ``acquire`` looks it up)."""
    from vmforensics.acquire.batch_plan import SecretRef
    from vmforensics.cli.common import KEYRING_SERVICE_PREFIX

    if args.password_env:
        return lambda settings: SecretRef(env=args.password_env)
    if args.password_keyring:
        return lambda settings: SecretRef(
            keyring=(f"{KEYRING_SERVICE_PREFIX}{settings.get('host')}", str(settings.get("user")))
        )
    return None


def _key_ref(args: argparse.Namespace) -> Any:
    """The key as workers load it: the PEM path (and the passphrase's variable if it is encrypted),
    or the token's module and labels (the PIN from $VMFORENSICS_PKCS11_PIN on every worker)."""
    from vmforensics.acquire.batch_plan import KeyRef, SecretRef, TokenKeyRef
    from vmforensics.cli.common import PKCS11_PIN_ENV
    from vmforensics.custody.signing import SigningKey

    if args.pkcs11_module:
        if args.key or not args.pkcs11_token or not args.pkcs11_key:
            raise UsageError("--pkcs11-module needs --pkcs11-token and --pkcs11-key (and no --key)")
        pin = SecretRef(env=PKCS11_PIN_ENV)
        return TokenKeyRef(
            args.pkcs11_module, args.pkcs11_token, args.pkcs11_key, pin=pin, certificates=args.cert
        )
    if not args.key:
        if args.cert:
            raise UsageError("--cert certifies a key: give --key PEM or --pkcs11-module too")
        return None
    try:
        SigningKey.load(args.key)
    except Exception:
        return KeyRef(args.key, SecretRef(env=args.key_passphrase_env), certificates=args.cert)
    return KeyRef(args.key, certificates=args.cert)
