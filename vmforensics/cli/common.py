"""Options and output shared by the acquisition commands."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from typing import Any

from vmforensics.custody.models import CaseInfo, to_plain
from vmforensics.custody.names import printable
from vmforensics.custody.signing import Signer, SigningKey
from vmforensics.errors import UsageError

PASSWORD_ENV = "VMFORENSICS_PASSWORD"
KEY_PASSPHRASE_ENV = "VMFORENSICS_KEY_PASSPHRASE"
PKCS11_PIN_ENV = "VMFORENSICS_PKCS11_PIN"
KEYRING_SERVICE_PREFIX = "vmforensics:"

log = logging.getLogger(__name__)


def add_acquire_options(parser: argparse.ArgumentParser, *, preserve: tuple[str, ...] = ("none",)) -> None:
    """--out, case facts, signing key, hashes, preservation and output options."""
    parser.add_argument("--out", required=True, help="new evidence directory (must not exist or be empty)")
    add_case_options(parser.add_argument_group("case"))
    signing = parser.add_argument_group("signing")
    add_signing_options(signing)
    add_anchor_options(signing)
    how = parser.add_argument_group("acquisition")
    how.add_argument("--preserve", choices=preserve, default=preserve[0], help="how to freeze the VM first")
    if preserve != ("none",):
        how.add_argument("--no-memory", action="store_true", help="snapshot without the guest's memory")
        how.add_argument("--isolate", action="store_true", help="disconnect the VM's network first")
        how.add_argument(
            "--no-cleanup", action="store_true", help="leave what preservation created on the source"
        )
    how.add_argument(
        "--hash",
        action="append",
        default=[],
        metavar="ALGO",
        help="extra hash besides sha256 (md5, sha1, sha512)",
    )
    how.add_argument(
        "--remote-hash", action="store_true", help="also hash each file on the source side and compare"
    )
    how.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="also read files the VM's own files name beneath DIR (a disk on another datastore); recorded",
    )
    how.add_argument(
        "--memory-image",
        choices=("auto", "raw", "elf", "lime"),
        default="auto",
        help="format of the memory image converted from a saved memory state after the seal (default "
        "auto: raw unless its holes would outweigh the memory, then elf)",
    )
    how.add_argument(
        "--no-memory-image", action="store_true", help="no memory image under derived/ after the seal"
    )
    how.add_argument("--resume", action="store_true", help="continue an interrupted acquisition in --out")
    how.add_argument("--no-progress", action="store_true", help="no progress bars")
    how.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")


def add_case_options(group: argparse._ArgumentGroup) -> None:
    """--case, --examiner, --evidence-id, --description, --authority: read by :func:`case_from_args`."""
    group.add_argument("--case", dest="case_id", default=os.environ.get("VMFORENSICS_CASE"), help="case id")
    group.add_argument(
        "--examiner", default=os.environ.get("VMFORENSICS_EXAMINER"), help="examiner name (default: $USER)"
    )
    group.add_argument("--evidence-id", help="evidence / exhibit number")
    group.add_argument("--description", help="what is being acquired and why")
    group.add_argument("--authority", help="warrant, consent or policy reference")


def add_signing_options(group: argparse._ArgumentGroup) -> None:
    """--key and --key-passphrase-env: read by :func:`signer_from_args`."""
    group.add_argument("--key", help="examiner's private key (PEM); default: a single-use key")
    group.add_argument(
        "--key-passphrase-env",
        default=KEY_PASSPHRASE_ENV,
        metavar="VAR",
        help=f"environment variable holding the key's passphrase (default {KEY_PASSPHRASE_ENV}; prompts if unset)",
    )


def add_anchor_options(group: argparse._ArgumentGroup) -> None:
    """--cert, --pkcs11-module/-token/-key and --tsa: read by :func:`signer_from_args` and
    :func:`run_acquisition`."""
    group.add_argument(
        "--cert", metavar="PEM", help="the examiner's certificate chain (leaf first) for the key"
    )
    group.add_argument(
        "--pkcs11-module",
        metavar="SO",
        help=f"sign on a PKCS#11 token: the module library (PIN from {PKCS11_PIN_ENV} or a prompt)",
    )
    group.add_argument("--pkcs11-token", metavar="LABEL", help="the token's label (with --pkcs11-module)")
    group.add_argument(
        "--pkcs11-key", metavar="LABEL", help="the key's label on the token (with --pkcs11-module)"
    )
    group.add_argument(
        "--tsa",
        action="append",
        default=[],
        metavar="URL",
        help="RFC 3161 time-stamping authority asked for a token over the sealed manifest (repeatable)",
    )


def password_from_env_or_prompt(
    prompt: str, env: str = PASSWORD_ENV, *, account: tuple[str, str] | None = None
) -> str:
    """Passwords never come from the command line: the environment, else the keyring, else a prompt.

    ``account`` is (host, user): the keyring entry is service ``vmforensics:HOST``, that user name
    (``keyring set vmforensics:vcenter01 ir@vsphere.local``); used only if ``keyring`` is installed.
    """
    if env in os.environ:
        return os.environ[env]
    if account is not None:
        stored = keyring_password(*account)
        if stored is not None:
            return stored
    if not sys.stdin.isatty():
        raise UsageError(f"no password: set {env} or run from a terminal to be prompted")
    return getpass.getpass(prompt)


def keyring_password(host: str, user: str) -> str | None:
    """The password stored for ``user`` under service ``vmforensics:HOST``, if the keyring package has one."""
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:
        return None
    try:
        return keyring.get_password(f"{KEYRING_SERVICE_PREFIX}{host}", user)
    except KeyringError as exc:
        log.warning("keyring lookup for %s@%s failed: %s", user, host, exc)
        return None


def case_from_args(args: argparse.Namespace) -> CaseInfo:
    if not args.case_id:
        raise UsageError("--case is required (or set VMFORENSICS_CASE)")
    examiner = args.examiner or os.environ.get("USER") or getpass.getuser()
    return CaseInfo(
        case_id=args.case_id,
        examiner=examiner,
        evidence_id=args.evidence_id,
        description=args.description,
        authority=args.authority,
    )


def signer_from_args(args: argparse.Namespace) -> Signer | None:
    """The key of --key (a PEM file) or --pkcs11-* (a token), carrying --cert's chain if given."""
    module, cert = getattr(args, "pkcs11_module", None), getattr(args, "cert", None)
    if module:
        if args.key:
            raise UsageError("give --key or --pkcs11-module, not both")
        if not args.pkcs11_token or not args.pkcs11_key:
            raise UsageError("--pkcs11-module needs --pkcs11-token LABEL and --pkcs11-key LABEL")
        from vmforensics.custody.pkcs11 import PKCS11Key

        pin = password_from_env_or_prompt(f"PIN for token {args.pkcs11_token}: ", PKCS11_PIN_ENV)
        return PKCS11Key(module, args.pkcs11_token, args.pkcs11_key, pin, certificates=cert or ())
    if not args.key:
        if cert:
            raise UsageError("--cert certifies a key: give --key PEM or --pkcs11-module too")
        return None
    try:
        key = SigningKey.load(args.key)
    except Exception:
        passphrase = password_from_env_or_prompt(f"passphrase for {args.key}: ", args.key_passphrase_env)
        key = SigningKey.load(args.key, passphrase)
    return key.with_certificates(cert) if cert else key


def run_acquisition(acquirer: Any, target: str, args: argparse.Namespace, **extra: Any) -> int:
    """Run ``acquirer.acquire`` with the common options, print a summary (or JSON), return 0."""
    options: dict[str, Any] = {
        "case": case_from_args(args),
        "signer": signer_from_args(args),
        "preserve": args.preserve,
        "hashes": tuple(args.hash),
        "progress": not args.no_progress,
        "resume": args.resume,
        "remote_hash": args.remote_hash,
        "tsa": tuple(args.tsa),
        "memory_image": False if args.no_memory_image else args.memory_image,
        "allowed_roots": tuple(args.allow_root),
    }
    if hasattr(args, "no_memory"):
        options.update(memory=not args.no_memory, isolate=args.isolate, cleanup=not args.no_cleanup)
    options.update(extra)
    try:
        result = acquirer.acquire(target, args.out, **options)
    finally:
        if hasattr(options["signer"], "close"):  # a PKCS#11 key logs out of its token
            options["signer"].close()
    if args.json:
        print(json.dumps(to_plain(result.manifest), indent=2, sort_keys=True))
    else:
        print(summary(result))
    return 0


def summary(result: Any) -> str:
    manifest = result.manifest
    vm = manifest.source.vm
    lines = [
        f"acquired {vm.name if vm else '?'} into {result.path} in {result.duration:.1f} s",
        f"  {len(manifest.files)} files, {manifest.total_bytes:,} bytes; {len(manifest.omissions)} not acquired",
        f"  signed by {manifest.integrity.signer_key_id} ({manifest.integrity.signature_algorithm})",
        f"  ledger head {manifest.integrity.ledger_head} ({manifest.integrity.ledger_events} events)",
    ]
    lines += [f"  - {o.source_path}: {o.reason}" for o in manifest.omissions]
    lines += [f"  {stamp}" for stamp in getattr(result, "timestamps", ())]
    return "\n".join(printable(line) for line in lines)  # names from the source cannot add lines


def emit_json(value: Any) -> None:
    print(json.dumps(to_plain(value), indent=2, sort_keys=True))
