"""`zsad-edge keygen --out KEY`: a minisign key pair for signing bundles (KEY and KEY.pub).

KEY signs (`zsad-edge sign`); keep it with whoever releases bundles, never on a station. KEY.pub
goes into each station's trusted keys folder (`--trusted-keys DIR`). With ZSAD_EDGE_KEY_PASSWORD
set, KEY is encrypted with it (scrypt, as minisign does); without, it is stored unencrypted.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..signing import PASSWORD_ENV, generate_key
from ..stopping import StopRequest

HELP = "make a key pair for signing bundles (minisign format)"
PARENTS = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the secret key file; the public key is OUT.pub")


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    identity = generate_key(args.out, os.environ.get(PASSWORD_ENV) or None)
    print(json.dumps({"key_id": identity, "secret_key": str(args.out), "public_key": f"{args.out}.pub",
                      "encrypted": bool(os.environ.get(PASSWORD_ENV))}))  # fmt: skip
    return 0
