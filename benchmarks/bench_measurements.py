"""Benchmark the measurement tools on the real DeepSeek-R1 EP16 set beside the public scripts.

Prints, for ``unify -r 1 -u -s`` (EP16 -> 1) and ``expand -w 16`` (1 -> EP16):

* ours: wall time in a fresh process (like the scripts), peak RSS, and where the time goes
  (parse, compute, encode, write: measured in-process);
* the I/O floor of the unify: parse the 16 JSON files, build and pickle the ~30k arrays of the
  unified NPZ with ``np.savez``, encode the unified JSON with orjson;
* the public reference scripts (``--reference-dir`` holding ``step-5-unify_measurements.py`` and
  ``step-6-expand-measurements.py``), their peak RSS, the ratios, and whether the values are
  identical (``harness.measurements.diff``).

Measured 2026-12-02 on a quiet 2-core AVX-512 host, best of 3: unify 0.34 s vs the reference's
1.20 s (3.5x wall, 2.9x CPU, 104 vs 148 MB RSS); expand 0.48 s vs 17.2 s (35x); identical values.

The machine may be shared: runs alternate ours/reference and each figure is the best of
``--repeat`` runs; compare the ratios, not the seconds. Not a test: nothing asserts on timings.

    python benchmarks/bench_measurements.py --reference-dir /tmp/ref --repeat 3
"""

from __future__ import annotations

import argparse
import compileall
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.measurements import diff  # noqa: E402
from harness.measurements import expand  # noqa: E402
from harness.measurements import jsonio  # noqa: E402
from harness.measurements import unify  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("HARNESS_SHARED_DATA", REPO.parent / "shared" / "data"))
SET = "inc-measurements/deepseek-r1-0528-g2-ep16"
UNIFY_SCRIPT = "step-5-unify_measurements.py"
EXPAND_SCRIPT = "step-6-expand-measurements.py"


def run(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of a child process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _arrays(doc: dict) -> dict:
    """The NPZ dict of a parsed document: float32 arrays, built entry by entry as INC's tools do."""
    nodes = {}
    for name, node in doc["Nodes"].items():
        nodes[name] = {
            k: (
                {p: np.array(x, dtype=np.float32) for p, x in v.items()}
                if isinstance(v, dict)
                else [np.array(x, dtype=np.float32) for x in v]
            )
            for k, v in node.items()
        }
    return {**{k: v for k, v in doc.items() if k != "Nodes"}, "Nodes": nodes}


def io_floor(src: Path, unified: Path, work: Path) -> dict[str, float]:
    """Parse the 16 JSON; build and np.savez the unified arrays; orjson the unified JSON."""
    files = [f for f in sorted(src.glob("*_[0-9]*_16.json")) if "mod_list" not in f.name]
    t0 = time.perf_counter()
    for f in files:
        jsonio.decode(f.read_bytes(), str(f))
    parse = time.perf_counter() - t0
    doc = jsonio.decode(next(unified.glob("*_0_1.json")).read_bytes(), "unified")
    t0 = time.perf_counter()
    arrays = _arrays(doc)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.savez(work / "floor.npz", arrays)
    npz = time.perf_counter() - t0
    t0 = time.perf_counter()
    (work / "floor.json").write_bytes(jsonio.compact(doc))
    js = time.perf_counter() - t0
    count = sum(
        len(a) if isinstance(a, (list, dict)) else 1
        for n in arrays["Nodes"].values()
        for a in n.values()
    )
    return {
        "parse": parse,
        "build": build,
        "npz": npz,
        "json": js,
        "arrays": count,
        "total": parse + build + npz + js,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="Shared data root. Default: %(default)s"
    )
    parser.add_argument(
        "--reference-dir", type=Path, help="Directory with the public step-5/step-6 scripts"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="Runs per figure (best is kept). Default: %(default)s"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="Skip comparing values with the reference"
    )
    args = parser.parse_args(argv)
    src = args.data / SET
    if not src.is_dir():
        raise SystemExit(f"{src} not found (pass --data or set HARNESS_SHARED_DATA)")
    ref = args.reference_dir
    if ref is not None and not (ref / UNIFY_SCRIPT).is_file():
        raise SystemExit(f"{ref / UNIFY_SCRIPT} not found")
    work = Path(tempfile.mkdtemp(prefix="bench-measurements-"))
    py = sys.executable
    best: dict[str, tuple[float, float, float]] = {}

    def keep(key: str, result: tuple[float, float, float]) -> None:
        old = best.get(key)
        best[key] = (
            result
            if old is None
            else (min(old[0], result[0]), min(old[1], result[1]), max(old[2], result[2]))
        )

    # an installed package runs from bytecode; this sandbox may set PYTHONDONTWRITEBYTECODE
    compileall.compile_dir(str(REPO / "harness"), quiet=1)

    phases_unify: dict[str, float] = {}
    phases_expand: dict[str, float] = {}
    try:
        for _ in range(args.repeat):
            ours_u, ours_e = work / "ours-u1", work / "ours-ep16"
            shutil.rmtree(ours_u, ignore_errors=True)
            keep(
                "ours unify",
                run(
                    [
                        py,
                        "-m",
                        "harness.measurements",
                        "unify",
                        "-m",
                        str(src),
                        "-o",
                        str(ours_u),
                        "-r",
                        "1",
                        "-u",
                        "-s",
                    ],
                    REPO,
                ),
            )
            shutil.rmtree(ours_e, ignore_errors=True)
            keep(
                "ours expand",
                run(
                    [
                        py,
                        "-m",
                        "harness.measurements",
                        "expand",
                        "-m",
                        str(ours_u),
                        "-o",
                        str(ours_e),
                        "-w",
                        "16",
                    ],
                    REPO,
                ),
            )
            if ref is not None:
                ref_u, ref_e = fresh(work / "ref-u1"), fresh(work / "ref-ep16")
                keep(
                    "reference unify",
                    run(
                        [
                            py,
                            str(ref / UNIFY_SCRIPT),
                            "-m",
                            str(src),
                            "-o",
                            str(ref_u),
                            "-r",
                            "1",
                            "-u",
                            "-s",
                        ],
                        work,
                    ),
                )
                keep(
                    "reference expand",
                    run(
                        [
                            py,
                            str(ref / EXPAND_SCRIPT),
                            "-m",
                            str(ref_u),
                            "-o",
                            str(ref_e),
                            "-w",
                            "16",
                        ],
                        work,
                    ),
                )
            # in-process: where the time goes
            shutil.rmtree(work / "inproc-u1", ignore_errors=True)
            t0 = time.perf_counter()
            outcome = unify(
                src, work / "inproc-u1", ranks=1, expert_parallel=True, skip_scales=True
            )
            wall = time.perf_counter() - t0
            if not phases_unify or wall < phases_unify["wall"]:
                phases_unify = {**outcome.timings.seconds, "wall": wall}
            shutil.rmtree(work / "inproc-ep16", ignore_errors=True)
            t0 = time.perf_counter()
            outcome = expand(work / "inproc-u1", work / "inproc-ep16", 16)
            wall = time.perf_counter() - t0
            if not phases_expand or wall < phases_expand["wall"]:
                phases_expand = {**outcome.timings.seconds, "wall": wall}
        floor = min(
            (io_floor(src, work / "ours-u1", work) for _ in range(args.repeat)),
            key=lambda f: f["total"],
        )

        def phases(p: dict[str, float]) -> str:
            return ", ".join(f"{k} {p[k]:.2f}" for k in ("parse", "compute", "encode", "write"))

        out = io.StringIO()
        w = out.write

        def line(label: str, r: tuple[float, float, float], extra: str = "") -> None:
            w(
                f"  {label:<14} {r[0]:6.2f} s wall {r[1]:6.2f} s CPU  "
                f"peak RSS {r[2]:4.0f} MB{extra}\n"
            )

        def versus(ours: tuple[float, float, float], ref: tuple[float, float, float]) -> str:
            return (
                f"\n  {'':<14} ours is {ref[0] / ours[0]:.1f}x faster (wall), "
                f"{ref[1] / ours[1]:.1f}x (CPU); {ours[2] / ref[2]:.2f}x the memory"
            )

        w(
            f"DeepSeek-R1-0528 EP16 measurements ({src}); best of {args.repeat}; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. Processes include start-up.\n\n"
        )
        w("unify -r 1 -u -s (16 ranks -> 1)\n")
        w(
            f"  {'I/O floor':<14} {floor['total']:6.2f} s  (parse 16 JSON {floor['parse']:.2f}; "
            f"build {floor['arrays']:.0f} float32 arrays {floor['build']:.2f} and np.savez them "
            f"{floor['npz']:.2f}; orjson {floor['json']:.2f})\n"
        )
        ou = best["ours unify"]
        line("ours", ou, f"  {ou[0] / floor['total']:.2f}x the floor")
        w(
            f"  {'ours in-proc':<14} {phases_unify['wall']:6.2f} s  ({phases(phases_unify)}) "
            f"{phases_unify['wall'] / floor['total']:.2f}x the floor\n"
        )
        if "reference unify" in best:
            line("reference", best["reference unify"], versus(ou, best["reference unify"]))
        w("\nexpand -w 16 (1 rank -> 16)\n")
        oe = best["ours expand"]
        line("ours", oe)
        w(f"  {'ours in-proc':<14} {phases_expand['wall']:6.2f} s  ({phases(phases_expand)})\n")
        if "reference expand" in best:
            line("reference", best["reference expand"], versus(oe, best["reference expand"]))
        if ref is not None and not args.no_verify:
            same_u = diff(work / "ours-u1", work / "ref-u1").identical
            same_e = diff(work / "ours-ep16", work / "ref-ep16").identical
            w(
                f"\nvalues identical to the reference: unify {'yes' if same_u else 'NO'}, "
                f"expand {'yes' if same_e else 'NO'} "
                "(node names, order, shapes, LocalRank, every number)\n"
            )
        print(out.getvalue(), end="")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
