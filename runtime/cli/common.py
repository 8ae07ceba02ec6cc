"""What the runtime commands share: argument groups (one spelling of --backend, --precision,
--no-verify, --memory-bank) and opening a detector from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..archive.ray_data import LOCAL, RayOptions
from ..backends.components import BACKENDS
from ..backends.openvino import DEVICES
from ..bundle import BASE_PRECISION
from ..detector import Detector, DetectorSpec
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


def ray_arguments() -> argparse.ArgumentParser:
    """Parent parser: --ray and its sizing (runtime/archive/ray_data.py), for the archive commands."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("Ray (score on a cluster: zsad-edge[ray])")
    group.add_argument(
        "--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
        help=f"score on Ray: `{LOCAL}` (a private instance on this machine; the default with a bare --ray), "
        "`auto` or HOST:PORT of a running cluster",
    )  # fmt: skip
    group.add_argument("--ray-cpus", type=int, help="CPUs of the local instance (default: all)")
    group.add_argument("--ray-actors", type=int, help="scoring actors, one detector each (default: CPUs per actor fit)")
    group.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves")
    group.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPU share each actor reserves")
    group.add_argument("--ray-object-store-mb", type=int, help="object store of the local instance")
    return parent


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The --ray options, checked; None without --ray."""
    if args.ray is None:
        return None
    options = RayOptions(args.ray, args.ray_cpus, args.ray_actors, args.ray_cpus_per_actor, args.ray_gpus_per_actor,
                         args.ray_object_store_mb, getattr(args, "batch_size", 1))  # fmt: skip
    options.check()
    return options


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
    return DetectorSpec(bundle, backend, precision, memory_bank, device, verify).open()
