"""`zsad-edge sign BUNDLE --key KEY`: sign a bundle's manifest (manifest.json.minisig beside it).

The bundle's files are verified against the manifest first: only what the manifest describes is
signed. The signature is minisign's: `minisign -Vm BUNDLE/manifest.json -p KEY.pub` verifies it.
An encrypted key takes its password from ZSAD_EDGE_KEY_PASSWORD. Signing again replaces the
signature (after `calibrate`, which changes the manifest, a bundle must be signed again).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..signing import PASSWORD_ENV, SIGNATURE_FILE, sign_bundle
from ..stopping import StopRequest

HELP = "sign a bundle with a minisign secret key"
PARENTS = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--key", type=Path, required=True, help="the secret key (from `zsad-edge keygen`)")


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    identity = sign_bundle(args.bundle, args.key, os.environ.get(PASSWORD_ENV) or None)
    print(json.dumps({"bundle": str(args.bundle), "signature": str(args.bundle / SIGNATURE_FILE), "key_id": identity}))
    return 0
