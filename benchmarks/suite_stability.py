"""Does the README's test command pass every time on a fresh clone? Runs it repeatedly and reports
every failure with its cause.

Three conditions, `--runs` times each, in this order:
  without-mosquitto  the MQTT tests must skip with the install step (needs mosquitto absent);
  with-mosquitto     mosquitto installed (by apt-get, as .ci/run does) and the MQTT tests run;
  cpu-burner         as with-mosquitto, with one CPU-burning process beside the suite.
Each run clones the current commit afresh, puts `../shared` beside the clone, installs the clone
(`pip install --no-deps -e`: the README's install without the downloads) into a virtual environment
that sees this interpreter's packages, and runs `python -m pytest -q` there; this checkout's own
install is left alone.

  python benchmarks/suite_stability.py --out benchmarks/results/suite_stability.json
  python benchmarks/suite_stability.py --conditions cpu-burner --runs 1
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zsad_edge.benchmarks.reports import machine_info, write_report

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = ("without-mosquitto", "with-mosquitto", "cpu-burner")
SUMMARY = re.compile(r"^=*\s*(.*(?:passed|failed|error).*?) in ([\d.]+)s")


def mosquitto_installed() -> bool:
    return any(shutil.which("mosquitto", path=p) for p in (None, "/usr/sbin:/usr/local/sbin"))


def prepare(condition: str) -> None:
    """Make the machine fit the condition, or stop with the step that would."""
    if condition == "without-mosquitto" and mosquitto_installed():
        raise SystemExit("without-mosquitto needs mosquitto absent: apt-get remove -y mosquitto, or skip the condition")
    if condition != "without-mosquitto" and not mosquitto_installed():
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "mosquitto"], check=True)


def environment(scratch: Path) -> Path:
    """A virtual environment over this interpreter's packages, for the clones; its python."""
    folder = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(folder)], check=True)
    return folder / "bin" / "python"


def run_once(condition: str, scratch: Path, index: int, python: Path) -> dict:
    """One fresh clone, one run of the test command; its outcome and every failure's first error line."""
    clone = scratch / f"run{index}" / "zsad-edge"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (clone.parent / "shared").symlink_to(shared)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(clone)], check=True)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "cpu-burner" else None
    began = time.monotonic()
    try:
        proc = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"],
            cwd=clone, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        if burner is not None:
            burner.kill()
    lines = proc.stdout.splitlines()
    summary = next((m.group(1) for line in reversed(lines) if (m := SUMMARY.match(line))), "no summary line")
    failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    skips = [line for line in lines if line.startswith("SKIPPED ")]
    (scratch / f"run{index}.log").write_text(proc.stdout + proc.stderr)
    shutil.rmtree(clone.parent, ignore_errors=True)
    return {
        "condition": condition,
        "exit_code": proc.returncode,
        "minutes": round((time.monotonic() - began) / 60, 2),
        "summary": summary,
        "failures": failures,
        "skips": skips,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--runs", type=int, default=3, help="runs per condition")
    parser.add_argument("--logs", type=Path, help="keep each run's full output here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="JSON path (default ./suite_stability.json)")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    runs = []
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.logs or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        python = environment(scratch)
        for condition in args.conditions:
            prepare(condition)
            for _ in range(args.runs):
                runs.append(run_once(condition, scratch, len(runs), python))
                r = runs[-1]
                print(f"{condition} run {len(runs)}: exit {r['exit_code']}, {r['summary']}, {r['minutes']} min")
                for failure in r["failures"]:
                    print(f"  {failure}", flush=True)
    failed = [r for r in runs if r["exit_code"] != 0]
    print(f"\n{len(runs) - len(failed)} of {len(runs)} runs passed (commit {commit[:10]})")
    report = {"benchmark": "suite_stability", "commit": commit, "runs": runs, "machine": machine_info()}
    write_report(report, args.out, "suite_stability")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
