"""What the runtime commands share: argument groups (one spelling of --backend, --precision,
--no-verify, --memory-bank) and opening a detector from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backends.components import BACKENDS
from ..backends.openvino import DEVICES
from ..bundle import BASE_PRECISION
from ..detector import Detector
from ..signing import TRUSTED_KEYS_ENV, require_trusted_keys

EXIT_PARTIAL = 1  # done, but some images were skipped
EXIT_ERROR = 2  # one `error: ...` line


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """`--help` keeps the module docstring's layout and names each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def backend_arguments(with_precision: bool = True, with_verify: bool = False) -> argparse.ArgumentParser:
    """Parent parser: --backend, and where the command takes them, --precision and --no-verify."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("backend")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: an NVIDIA GPU where there is one, else OpenVINO "
        "where installed (for its precisions), else onnxruntime's CPU provider",
    )
    group.add_argument("--device", choices=DEVICES, default="CPU", help="the OpenVINO device (--backend openvino)")
    if with_precision:
        group.add_argument(
            "--precision", default=BASE_PRECISION, help="fp32 or a variant the bundle holds (see `info`)"
        )
    if with_verify:
        group.add_argument("--no-verify", action="store_true", help="skip the sha256 check of bundle files")
    return parent


def trust_arguments() -> argparse.ArgumentParser:
    """Parent parser: --trusted-keys (signing.py), for every command that opens a bundle."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument_group("signatures").add_argument(
        "--trusted-keys",
        type=Path,
        help=f"run only bundles signed by a key in this folder of minisign *.pub files (or set {TRUSTED_KEYS_ENV})",
    )
    return parent


def apply_trusted_keys(args: argparse.Namespace) -> None:
    """Where a command was given --trusted-keys, every bundle it opens must be signed by one."""
    if getattr(args, "trusted_keys", None) is not None:
        require_trusted_keys(args.trusted_keys)


def open_detector(
    bundle: Path,
    backend: str,
    memory_bank: Path | None = None,
    verify: bool = True,
    precision: str = BASE_PRECISION,
    device: str = "CPU",
) -> Detector:
    detector = Detector.from_bundle(bundle, backend=backend, verify=verify, precision=precision, device=device)
    if memory_bank is not None:
        detector.load_memory_bank(memory_bank)
    return detector
