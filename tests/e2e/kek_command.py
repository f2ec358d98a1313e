#!/usr/bin/env python3
"""A stand-in for an HSM client, for dativo's `command` key provider: wraps and unwraps data
keys with AES-256-GCM under a key-encryption key that dativo never sees.

    kek_command.py wrap   < {"key_id": "...", "plaintext": "<base64>"}  > {"wrapped": "..."}
    kek_command.py unwrap < {"key_id": "...", "wrapped": "..."}         > {"plaintext": "<base64>"}

The KEK is read from the file named by $TEST_HSM_KEY_FILE (64 hex digits)."""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def main():
    verb = sys.argv[-1]
    req = json.load(sys.stdin)
    with open(os.environ["TEST_HSM_KEY_FILE"]) as f:
        kek = AESGCM(bytes.fromhex(f.read().strip()))
    aad = req["key_id"].encode()
    if verb == "wrap":
        nonce = os.urandom(12)
        ct = kek.encrypt(nonce, base64.b64decode(req["plaintext"]), aad)
        print(json.dumps({"wrapped": "hsm1:" + base64.b64encode(nonce + ct).decode()}))
    elif verb == "unwrap":
        raw = base64.b64decode(req["wrapped"].removeprefix("hsm1:"))
        try:
            pt = kek.decrypt(raw[:12], raw[12:], aad)
        except Exception:
            print("hsm: unwrap refused, the key was not wrapped by this HSM key", file=sys.stderr)
            sys.exit(3)
        print(json.dumps({"plaintext": base64.b64encode(pt).decode()}))
    else:
        print(f"unknown verb {verb}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
