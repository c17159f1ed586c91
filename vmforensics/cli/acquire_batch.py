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
        description="PLAN.json is a `survey local --json` report or a batch plan naming connections "
        "(docs/fleet.md). Secrets are named by the plan (environment variable, keyring) and read on "
        "the workers; the key passphrase too: set --key-passphrase-env's variable on every worker.",
    )
    parser.add_argument("plan", help="the plan: a local survey's JSON, or a batch plan")
    parser.add_argument(
        "--out", required=True, help="the batch directory (new or empty; existing with --resume)"
    )
    where = parser.add_argument_group("where the work runs (one of)")
    where.add_argument("--local", type=int, metavar="N", help="N acquisitions at once on this machine")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument(
        "--worker-root", metavar="DIR", help="where workers write the members (default: --out as they see it)"
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-total", type=int, metavar="N", help="at most N acquisitions overall")
    limits.add_argument("--per-host", type=int, metavar="N", help="at most N at once per hypervisor host")
    limits.add_argument("--per-datastore", type=int, metavar="N", help="at most N at once per datastore")
    add_case_options(parser.add_argument_group("case"))
    add_signing_options(parser.add_argument_group("signing"))
    how = parser.add_argument_group("acquisition")
    how.add_argument("--preserve", help="how to freeze each VM first (the acquirer's modes; default none)")
    how.add_argument("--hash", action="append", default=[], metavar="ALGO", help="extra hash besides sha256")
    how.add_argument(
        "--tsa", action="append", default=[], metavar="URL", help="RFC 3161 TSA for each member's manifest"
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

    if (args.local is None) == (args.scheduler is None):
        raise UsageError("say where the work runs: --local N or --scheduler ADDRESS")
    plans = plans_from_file(args.plan)
    case = case_from_args(args)
    limits = Limits(
        total=args.local or args.max_total, per_host=args.per_host, per_datastore=args.per_datastore
    )
    options: dict[str, Any] = {"hashes": ("sha256", *args.hash), "tsa": tuple(args.tsa)}
    if args.preserve:
        options["preserve"] = args.preserve
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


def _key_ref(args: argparse.Namespace) -> Any:
    """The key as workers load it: the PEM path, and the passphrase's variable if it is encrypted."""
    from vmforensics.acquire.batch_plan import KeyRef, SecretRef
    from vmforensics.custody.signing import SigningKey

    if not args.key:
        return None
    try:
        SigningKey.load(args.key)
    except Exception:
        return KeyRef(args.key, SecretRef(env=args.key_passphrase_env))
    return KeyRef(args.key)
