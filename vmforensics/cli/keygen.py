"""``vmforensics keygen PATH``: create an examiner signing key (and PATH.pub)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from vmforensics.cli.common import KEY_PASSPHRASE_ENV, emit_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keygen", help="create an examiner signing key")
    parser.add_argument("path", help="where to write the private key (PATH.pub gets the public key)")
    parser.add_argument("--algorithm", choices=("ed25519", "ecdsa-p256", "rsa-pss"), default="ed25519")
    parser.add_argument(
        "--no-passphrase", action="store_true", help="store the private key unencrypted (not recommended)"
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"path", "public_key", "key_id", "algorithm"} as JSON'
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.custody.signing import SigningKey
    from vmforensics.errors import UsageError

    passphrase = None
    if not args.no_passphrase:
        passphrase = os.environ.get(KEY_PASSPHRASE_ENV)
        if passphrase is None:
            if not sys.stdin.isatty():
                raise UsageError(f"set {KEY_PASSPHRASE_ENV}, run from a terminal, or pass --no-passphrase")
            passphrase = getpass.getpass("passphrase for the new key: ")
            if passphrase != getpass.getpass("again: "):
                raise UsageError("the passphrases differ")
    key = SigningKey.generate(args.algorithm)
    path = key.save(args.path, passphrase)
    if args.json:
        emit_json(
            {"path": str(path), "public_key": f"{path}.pub", "key_id": key.key_id, "algorithm": key.algorithm}
        )
    else:
        print(f"{path} ({key.algorithm}), public key {path}.pub")
        print(f"key id {key.key_id}")
    return 0
