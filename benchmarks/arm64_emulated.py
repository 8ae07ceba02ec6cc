"""The lean runtime on aarch64 Linux (the CPU of Jetson boards, Raspberry Pi 4/5 and Arm servers),
under qemu user-mode emulation, against the same bundle on this x86 machine.

What it proves: the runtime's dependencies install as aarch64 wheels, and onnxruntime's aarch64
CPU kernels give the x86 results (score within 1e-5, the same verdict and mask, the map within
1e-4 of its range). What it does not: speed (emulated, many times slower), GPUs, TensorRT or
JetPack's own builds of OpenCV and onnxruntime.

Needs root and Debian's qemu-user-static, binfmt-support and debootstrap (installed here with
apt-get when missing). The arm64 root file system (Debian bookworm, minbase, with python3) is kept
in --rootfs between runs (about 3.5 minutes to make). Not part of the default test command.

  python benchmarks/arm64_emulated.py --out benchmarks/results/arm64_emulated.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report

REPO = Path(__file__).resolve().parents[1]
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap")
WHEELS = ("onnxruntime", "numpy", "opencv-python-headless", "Pillow", "tqdm")
CLEAN_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]
MAX_SCORE_ERROR, MAX_MAP_ERROR = 1e-5, 1e-4  # the map's: over its range

# Run in both worlds: every image's score, verdict, map and mask from the bundle, on onnxruntime's CPU.
SCORE_SCRIPT = """
import sys, numpy as np
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.image_io import list_images
detector = Detector.from_bundle(sys.argv[1], backend="cpu")
out = {}
for i, path in enumerate(list_images([sys.argv[2]])):
    r = detector(str(path))
    out[f"score{i}"], out[f"verdict{i}"] = np.float64(r.score), np.bool_(r.is_anomalous)
    out[f"map{i}"], out[f"mask{i}"] = r.anomaly_map, r.mask
np.savez(sys.argv[3], **out)
"""


def sh(*command: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **options)


def prepare_host() -> None:
    """qemu and binfmt for aarch64 binaries; debootstrap for the root file system."""
    if not all(shutil.which(tool) for tool in ("qemu-aarch64-static", "debootstrap", "update-binfmts")):
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", *HOST_PACKAGES)
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        sh("mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt))
    if not (binfmt / "qemu-aarch64").exists():
        sh("update-binfmts", "--enable", "qemu-aarch64")


def prepare_rootfs(rootfs: Path) -> None:
    """Debian arm64 with python3 and a virtual environment holding the runtime's aarch64 wheels."""
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        sh("debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
           "bookworm", str(rootfs), "http://deb.debian.org/debian")  # fmt: skip
    # pip inside needs the host's CA bundle (the inherited REQUESTS_CA_BUNDLE/PIP_CERT point at host paths).
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    if not (rootfs / "opt" / "venv" / "bin" / "python").exists():
        chroot(rootfs, "python3", "-m", "venv", "/opt/venv")
    chroot(rootfs, "/opt/venv/bin/pip", "install", "-q", "--only-binary=:all:", *WHEELS)


def chroot(rootfs: Path, *command: str, capture: bool = False) -> subprocess.CompletedProcess:
    """A command inside the root file system with a clean environment and only /proc mounted (with
    the host's /sys as well, `import onnxruntime` dies under qemu with a segmentation fault)."""
    proc = rootfs / "proc"
    mounted = subprocess.run(["mountpoint", "-q", str(proc)]).returncode == 0
    if not mounted:
        sh("mount", "-t", "proc", "proc", str(proc))
    try:
        return sh(*CLEAN_ENV, "chroot", str(rootfs), *command, capture_output=capture, text=True)
    finally:
        if not mounted:
            sh("umount", str(proc))


def stage_runtime(rootfs: Path) -> None:
    """The runtime alone (no torch side) as the `zsad_edge.runtime` package under /opt/zsad."""
    target = rootfs / "opt" / "zsad" / "zsad_edge"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO / "runtime", target / "runtime", ignore=shutil.ignore_patterns("__pycache__"))


def demo_inputs(folder: Path) -> tuple[Path, Path]:
    """The offline demo's tiny bundle and a few synthetic parts."""
    from zsad_edge.export.build import build_bundle
    from zsad_edge.export.demo import demo_config, synthetic_part

    bundle = build_bundle(demo_config(folder / "bundle", overwrite=False)).path
    images = folder / "images"
    images.mkdir()
    for seed in range(3):
        synthetic_part(images / f"part{seed}.png", seed=seed)
    return bundle, images


def compare(x86: Path, arm: Path) -> dict:
    a, b = np.load(x86), np.load(arm)
    count = sum(key.startswith("score") for key in a.files)
    rows = []
    for i in range(count):
        spread = max(float(np.ptp(a[f"map{i}"])), 1e-12)
        rows.append(
            {
                "score_error": float(abs(a[f"score{i}"] - b[f"score{i}"])),
                "map_error_over_range": float(np.abs(a[f"map{i}"] - b[f"map{i}"]).max()) / spread,
                "same_verdict": bool(a[f"verdict{i}"] == b[f"verdict{i}"]),
                "same_mask": bool(np.array_equal(a[f"mask{i}"], b[f"mask{i}"])),
            }
        )
    passed = all(
        r["score_error"] <= MAX_SCORE_ERROR
        and r["map_error_over_range"] <= MAX_MAP_ERROR
        and r["same_verdict"]
        and r["same_mask"]
        for r in rows
    )
    return {"images": rows, "passed": passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rootfs", type=Path, default=Path.home() / ".cache" / "zsad-edge" / "arm64-rootfs")
    parser.add_argument("--out", type=Path, help="JSON path (default ./arm64_emulated.json)")
    args = parser.parse_args(argv)
    prepare_host()
    prepare_rootfs(args.rootfs)
    stage_runtime(args.rootfs)
    with tempfile.TemporaryDirectory() as scratch:
        bundle, images = demo_inputs(Path(scratch))
        shutil.rmtree(args.rootfs / "opt" / "inputs", ignore_errors=True)
        shutil.copytree(Path(scratch), args.rootfs / "opt" / "inputs")
        script = Path(scratch) / "score.py"
        script.write_text(SCORE_SCRIPT)
        shutil.copy2(script, args.rootfs / "opt" / "score.py")
        sh(sys.executable, str(script), str(bundle), str(images), str(Path(scratch) / "x86.npz"))
        chroot(args.rootfs, "env", "PYTHONPATH=/opt/zsad", "/opt/venv/bin/python", "/opt/score.py",
               "/opt/inputs/bundle", "/opt/inputs/images", "/opt/arm64.npz")  # fmt: skip
        result = compare(Path(scratch) / "x86.npz", args.rootfs / "opt" / "arm64.npz")
    versions = chroot(
        args.rootfs, "/opt/venv/bin/python", "-c",
        "import platform, onnxruntime, numpy, cv2; "
        "print(platform.machine(), onnxruntime.__version__, numpy.__version__, cv2.__version__)",
        capture=True,
    ).stdout.split()  # fmt: skip
    for i, row in enumerate(result["images"]):
        same = {key: "same" if row[f"same_{key}"] else "DIFFERENT" for key in ("verdict", "mask")}
        print(
            f"image {i}: score error {row['score_error']:.2e}, map error {row['map_error_over_range']:.2e} of range, "
            f"verdict {same['verdict']}, mask {same['mask']}"
        )
    print(f"aarch64 ({' '.join(versions)}) vs x86: {'PASS' if result['passed'] else 'FAIL'}")
    report = {
        "benchmark": "arm64_emulated",
        "emulated": dict(zip(("machine", "onnxruntime", "numpy", "opencv"), versions)),
        "thresholds": {"score": MAX_SCORE_ERROR, "map_over_range": MAX_MAP_ERROR},
        **result,
        "host": machine_info(),
    }
    write_report(report, args.out, "arm64_emulated")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
