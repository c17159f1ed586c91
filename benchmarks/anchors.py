"""Custody anchors: proving RFC 3161 tokens and signing on a PKCS#11 token, against OpenSSL.

    python benchmarks/anchors.py [--tokens 50] [--signatures 200] [--workdir DIR]

(a) Token proof: ``--tokens`` tokens from OpenSSL's TSA (``openssl ts -reply`` behind the tests'
loopback front) are proven by ``vmforensics.custody.tsp.verify_token`` in this process and by
``openssl ts -verify`` (one process per token, as a script would run it). (b) Signing: one
manifest-sized message signed ``--signatures`` times with a software ``SigningKey`` and with a
``PKCS11Key`` on SoftHSM2, each key type, reporting signatures per second and the ratio. Needs
openssl; SoftHSM2 for (b).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.custody.pki import TestCA
from tests.custody.tsa import OpenSSLTSA
from vmforensics.custody.signing import SigningKey
from vmforensics.custody.timestamps import request_token
from vmforensics.custody.tsp import verify_token

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def tokens(work: Path, count: int) -> dict[str, float]:
    ca = TestCA(work / "ca")
    data = os.urandom(8000)  # about a manifest's size
    (work / "manifest.json").write_bytes(data)
    with OpenSSLTSA(work / "tsa", ca) as tsa:
        replies = [request_token(tsa.url, data)[0] for _ in range(count)]
        cert = tsa.cert_path
    for i, reply in enumerate(replies):
        (work / f"t{i}.tsr").write_bytes(reply)
    began = time.perf_counter()
    for reply in replies:
        verify_token(reply, data, [ca.certificate])
    ours = time.perf_counter() - began
    began = time.perf_counter()
    for i in range(count):
        subprocess.run(
            ["openssl", "ts", "-verify", "-data", "manifest.json", "-in", f"t{i}.tsr", "-CAfile", str(ca.pem),
             "-untrusted", str(cert)],
            cwd=work, check=True, capture_output=True,
        )  # fmt: skip
    theirs = time.perf_counter() - began
    return {
        "tokens": count,
        "verify_token_ms": 1000 * ours / count,
        "openssl_ts_verify_ms": 1000 * theirs / count,
    }


def signing(work: Path, count: int) -> list[dict[str, object]]:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    from vmforensics.custody.pkcs11 import PKCS11Key

    (work / "tokens").mkdir(parents=True)
    config = work / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(config)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "4321"],
        check=True, capture_output=True,
    )  # fmt: skip
    with pkcs11.lib(MODULE).get_token(token_label="bench").open(rw=True, user_pin="1234") as session:
        for label, curve, mechanism, key_type in (
            ("ecdsa-p256", "secp256r1", Mechanism.EC_KEY_PAIR_GEN, KeyType.EC),
            ("ed25519", "1.3.101.112", Mechanism.EC_EDWARDS_KEY_PAIR_GEN, KeyType.EC_EDWARDS),
        ):
            session.create_domain_parameters(
                key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
            ).generate_keypair(store=True, label=label, mechanism=mechanism)
        session.generate_keypair(KeyType.RSA, 3072, store=True, label="rsa-pss")
    data = os.urandom(8000)
    rows = []
    for algorithm in ("ed25519", "ecdsa-p256", "rsa-pss"):
        software = SigningKey.generate(algorithm)  # type: ignore[arg-type]
        began = time.perf_counter()
        for _ in range(count):
            software.sign(data)
        soft = time.perf_counter() - began
        with PKCS11Key(MODULE, "bench", algorithm, "1234") as hardware:
            began = time.perf_counter()
            for _ in range(count):
                hardware.sign(data)
            hard = time.perf_counter() - began
        rows.append(
            {
                "algorithm": algorithm,
                "software_per_s": round(count / soft),
                "softhsm_per_s": round(count / hard),
                "softhsm_over_software_time": round(hard / soft, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--signatures", type=int, default=200)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        result: dict[str, object] = {"token_proof": tokens(work / "tsa", args.tokens)}
        if Path(MODULE).exists() and shutil.which("softhsm2-util"):
            result["signing"] = signing(work / "hsm", args.signatures)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
