"""`zsad-edge info`: what a bundle holds and how it was built, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bundle import BASE_PRECISION, load_manifest
from ..signing import signature_state, trusted_keys_from_environment
from ..stopping import StopRequest
from .common import trust_arguments

HELP = "print a bundle's manifest summary"
PARENTS = (trust_arguments(),)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    manifest = load_manifest(args.bundle, verify_hashes=False)  # describes a refused bundle too
    params = manifest.method.get("params", {})
    print(
        json.dumps(
            {
                "method": manifest.method["name"],
                "clip": manifest.clip,
                "clipad_mode": params.get("clipad_mode"),
                "preprocess": manifest.preprocess.to_dict(),
                "taps": manifest.taps,
                "components": {k: v.file for k, v in manifest.components.items()},
                "sam": params.get("sam", {}).get("kind"),
                "precisions": {
                    BASE_PRECISION: "as exported",
                    **{name: _variant_summary(v) for name, v in manifest.precisions.items()},
                },
                "scoring": manifest.scoring,
                "signature": signature_state(args.bundle, trusted_keys_from_environment()),
            },
            indent=2,
        )
    )
    return 0


def _variant_summary(variant: dict) -> dict:
    """A precision variant's measured drift, and for integer variants the weight bits (7 or 8: 8 can
    saturate on CPUs without an int8 dot product)."""
    bits = variant.get("plan", {}).get("weight_bits")
    return {**variant["drift"], **({"weight_bits": bits} if bits is not None else {})}
