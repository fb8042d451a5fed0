#!/usr/bin/env python3
"""Mint many JWTs quickly for the "fresh token per request" benchmark cases.

The authgate CLI (`authgate token ...`) mints the tokens for the repeated-token
cases; spawning it tens of thousands of times would take minutes, so the big
token pools are signed here with Debian's python3-cryptography (OpenSSL), in
parallel on every core.  The claims have the same shape as the CLI's:
iss, sub, aud, scope, iat, exp (+ a jti so that every token is distinct).

Usage:
  mint.py --alg RS256 --key rs.key --iss bench-rs --aud authgate-bench \
          --scope chat --ttl 3600 --count 50000 --out tokens.txt [--sub-prefix user-]

--ttl may be negative (expired tokens for the sanity checks).
--count 1 --sub SUB prints a single token on stdout when --out is omitted.
"""
import argparse
import base64
import json
import os
import sys
import time
from multiprocessing import Pool

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

ARGS = None
KEY = None


def b64u(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def load_key(alg, path):
    with open(path, "rb") as f:
        raw = f.read()
    if alg.startswith("HS"):
        # Same rule as the SPEC: a single trailing newline is not part of the secret.
        return raw[:-1] if raw.endswith(b"\n") else raw
    return serialization.load_pem_private_key(raw, password=None)


def sign(alg, key, signing_input: bytes) -> bytes:
    if alg == "HS256":
        h = hmac.HMAC(key, hashes.SHA256())
        h.update(signing_input)
        return h.finalize()
    if alg == "RS256":
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    if alg == "ES256":
        der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    raise SystemExit(f"unsupported alg {alg}")


def init_worker(args):
    global ARGS, KEY
    ARGS = args
    KEY = load_key(args.alg, args.key)


def mint_range(bounds):
    start, end = bounds
    a = ARGS
    header = b64u(json.dumps({"alg": a.alg, "typ": "JWT"}, separators=(",", ":")).encode())
    now = int(time.time())
    out = []
    for i in range(start, end):
        claims = {
            "iss": a.iss,
            "sub": a.sub if a.sub else f"{a.sub_prefix}{i}",
            "scope": a.scope,
            "iat": now,
            "exp": now + a.ttl,
            "jti": f"{os.getpid()}-{i}",
        }
        if a.aud:
            claims["aud"] = a.aud
        payload = b64u(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = header + b"." + payload
        out.append((signing_input + b"." + b64u(sign(a.alg, KEY, signing_input))).decode())
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--alg", required=True, choices=["HS256", "RS256", "ES256"])
    p.add_argument("--key", required=True)
    p.add_argument("--iss", required=True)
    p.add_argument("--aud", default="")
    p.add_argument("--scope", default="chat")
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--sub", default="")
    p.add_argument("--sub-prefix", default="user-")
    p.add_argument("--out", default="")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    if args.count <= 1 or args.procs <= 1:
        init_worker(args)
        tokens = mint_range((0, args.count))
    else:
        chunk = 2000
        ranges = [(s, min(s + chunk, args.count)) for s in range(0, args.count, chunk)]
        with Pool(args.procs, initializer=init_worker, initargs=(args,)) as pool:
            tokens = [t for part in pool.map(mint_range, ranges) for t in part]

    text = "\n".join(tokens) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
