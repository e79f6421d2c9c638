"""Collection time of a generated 10,000-cell matrix (target: under 3 s on 2 cores).

Measured 2026-12-02 (2 cores, another pytest run beside it): one stage 10,000 items 1.05 s,
all six stages 60,000 items 3.0 s; before collection paused the cyclic GC: 2.9 s and 8.2 s.

Prints the time to load+expand the matrix alone, and the time of `pytest suites --collect-only`
on it (which is what a user waits for before the first stage starts). Not a test: figures only.

    .venv/bin/python benchmarks/bench_collection.py [--cells 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_matrix(path: Path, target_cells: int) -> int:
    """A product of 50 models x 2 devices x 2 tp x 5 ep x 2 kv x 5 nodes (= 10,000)."""
    models = max(1, target_cells // 200)
    lines = ["name: bench", "backend: gaudi", "models:"]
    for i in range(models):
        lines += [
            f"  m{i:03d}:",
            f"    hub_id: org/model-{i}",
            "    moe: true",
            "    num_experts: 64",
        ]
    lines += [
        "axes:",
        "  device: [g2, g3]",
        "  tp: [8, 16]",
        "  ep: [1, 8, 16, 32, 64]",
        "  nodes: [8, 9, 10, 11, 12]",
        "  kv_cache_dtype: [auto, fp8_inc]",
        "  quantization: [fp8]",
        "overrides:",
        "  - cells: '*/g3*'",
        "    gates: {accuracy.exact_match_strict: {min: 0.8}}",
        "  - cells: 'm00*'",
        "    settings: {accuracy: {limit: 50}}",
        "gates:",
        "  accuracy.exact_match_strict: {min: 0.5}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return models * 200


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _collect(path: Path, extra: list[str], repeat: int) -> tuple[list[float], int]:
    times, items = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(REPO / "suites"),
                "--matrix",
                str(path),
                "--collect-only",
                "-q",
                "-p",
                "no:cacheprovider",
                *extra,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
        items = sum(1 for line in out.stdout.splitlines() if "::" in line)
    return times, items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from harness.matrix import load_matrix

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        expected = write_matrix(path, args.cells)
        loads = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            matrix = load_matrix(path)
            loads.append(time.perf_counter() - start)
        assert len(matrix.cells) == expected, (len(matrix.cells), expected)
        print(f"cells: {len(matrix.cells)}")
        print(f"load+expand matrix: best {min(loads):.3f} s, median {_median(loads):.3f} s")
        for label, extra in (("one stage", ["--stages", "preflight"]), ("all six stages", [])):
            times, items = _collect(path, extra, args.repeat)
            print(
                f"pytest --collect-only, {label}: {items} items, best {min(times):.2f} s, "
                f"median {_median(times):.2f} s (whole process; target < 3 s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
