"""Figures of the gate statistics on synthetic nightly data (fixed seeds; not a test).

Prints, for issue 13's closing note:
  1. nightly series with 3% noise: false alarms per 100 runs, and detection rate and delay for
     5% and 10% steps, of (a) a fixed -5% limit against the previous run (the --compare-fail
     way), (b) the noise band learned from the last 10 passing runs, (c) change points;
  2. change-point libraries compared on the same series (ruptures PELT and BinSeg here;
     MongoDB's E-Divisive when `signal_processing_algorithms` imports, e.g. in a side venv);
  3. the FP8-vs-BF16 accuracy test: power to detect a 3-point drop at n=250 and n=1,319, paired
     (exact McNemar) against unpaired (two independent point estimates), and type-I error;
  4. coverage of the Wilson interval (against Wald) and of the repeats' t interval.

    .venv/bin/python benchmarks/bench_stats.py [--series 200] [--quick]

Measured 2026-12-04 (2 cores, other runs beside it; 200 series, 2000 draws):
  nightly, 3% noise        false/100   5% step: found, delay   10% step: found, delay
  fixed -5% vs previous      20.50       96% after 2.4           100% after 0.1
  noise band (3.5, K=20)      0.52       28% after 2.9            76% after 0.5
  change points (BinSeg)      0.07       98% after 4.4           100% after 3.0
  change-point libraries: BinSeg 0.10 / 93% after 4.4 (4 s), PELT 0.10 / 94% after 4.5 (38 s),
  E-Divisive (signal-processing-algorithms, side venv with numpy 1.26) 0.07 / 94% after 4.8 (9 s)
  FP8 3-point drop, BF16 75%, 8% discordant: paired McNemar power 30.0% at n=250, 97.6% at
  n=1,319; unpaired two estimates 12.2% and 41.4%; type-I 1.8%/1.6% (paired), 2.4%/2.9%;
  today's point rule (fp8 < bf16 - 2 points) fails 11.2% of equal builds at n=250 (0.2% at
  1,319) and catches 66.6% / 91.2% of 3-point drops
  coverage: Wilson 94.0-95.1% (n=250..1,319, p=0.5..0.97); t interval 95.1% (3), 94.3% (5)
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from collections.abc import Sequence

import numpy as np

from harness import stats

NOISE = 0.03
BASE = 1000.0
WARMUP = 10  # runs of history before judging starts
RUNS = 100  # nightly runs judged per steady series
STEP_AT = 30  # step series: runs before the step
AFTER = 20  # runs judged after the step


def steady(rng: np.random.Generator, n: int) -> np.ndarray:
    return BASE * (1 + NOISE * rng.standard_normal(n))


def stepped(rng: np.random.Generator, step: float) -> np.ndarray:
    xs = steady(rng, STEP_AT + AFTER)
    xs[STEP_AT:] *= 1 - step
    return xs


# alarm rules: given earlier passing values and today's value, alarm?
def fixed_rule(history: Sequence[float], value: float) -> bool:
    return (value - history[-1]) / history[-1] * 100 < -5.0


def band_rule(history: Sequence[float], value: float) -> bool:
    return stats.regression_verdict("output_throughput", value, history).status == "failed"


def _near_step(cps: Sequence[stats.ChangePoint], at: int, tol: int = 3) -> bool:
    return any(abs(cp.index - at) <= tol and cp.after < cp.before for cp in cps)


def nightly(
    rule: Callable[[Sequence[float], float], bool], series: int, seed: int
) -> tuple[float, dict[float, tuple[float, float]]]:
    """False alarms per 100 runs, and per step (detection rate, mean delay in runs)."""
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(series):
        xs = steady(rng, WARMUP + RUNS)
        passing = list(xs[:WARMUP])
        for x in xs[WARMUP:]:
            if rule(passing, float(x)):
                alarms += 1
            else:
                passing.append(float(x))
    per100 = alarms / series / RUNS * 100
    detection = {}
    for step in (0.05, 0.10):
        found, delays = 0, []
        for _ in range(series):
            xs = stepped(rng, step)
            passing = list(xs[:WARMUP])
            for i in range(WARMUP, len(xs)):
                alarmed = rule(passing, float(xs[i]))
                if alarmed and i >= STEP_AT:
                    found += 1
                    delays.append(i - STEP_AT)
                    break
                if not alarmed:
                    passing.append(float(xs[i]))
        detection[step] = (found / series, float(np.mean(delays)) if delays else math.nan)
    return per100, detection


def cp_nightly(
    detect: Callable[[np.ndarray], list[int]], series: int, seed: int
) -> tuple[float, dict[float, tuple[float, float]]]:
    """Change points: false ones per 100 steady runs; step found within +-3 runs, and after how
    many runs past the step the detector (re-run each night) first reports it."""
    rng = np.random.default_rng(seed)
    false = 0
    for _ in range(series):
        false += len(detect(steady(rng, RUNS)))
    per100 = false / series / (RUNS / 100)
    detection = {}
    for step in (0.05, 0.10):
        found, delays = 0, []
        for _ in range(series):
            xs = stepped(rng, step)
            for end in range(STEP_AT + 3, len(xs) + 1):
                if any(abs(i - STEP_AT) <= 3 for i in detect(xs[:end])):
                    found += 1
                    delays.append(end - STEP_AT)
                    break
        detection[step] = (found / series, float(np.mean(delays)) if delays else math.nan)
    return per100, detection


def _binseg(xs: np.ndarray) -> list[int]:
    return [cp.index for cp in stats.change_points(xs.tolist())]


def _pelt(xs: np.ndarray) -> list[int]:
    import ruptures

    sigma = stats.changepoint.robust_noise(xs) or 1.0
    if xs.size < 6:
        return []
    scaled = ((xs - np.median(xs)) / sigma).reshape(-1, 1)
    algo = ruptures.Pelt(model="l2", min_size=3, jump=1).fit(scaled)
    return [int(e) for e in algo.predict(pen=stats.changepoint.PENALTY * math.log(xs.size))][:-1]


def _edivisive(xs: np.ndarray) -> list[int]:
    from signal_processing_algorithms.energy_statistics import energy_statistics

    if xs.size < 6:
        return []
    return [int(i) for i in energy_statistics.e_divisive(xs, pvalue=0.05, permutations=100)]


def _print_nightly(name: str, per100: float, det: dict[float, tuple[float, float]]) -> None:
    d5, d10 = det[0.05], det[0.10]
    print(
        f"  {name:<34} {per100:6.2f}   {d5[0] * 100:5.0f}% after {d5[1]:4.1f}   "
        f"{d10[0] * 100:5.0f}% after {d10[1]:4.1f}"
    )


def section_nightly(series: int) -> None:
    print(f"1. nightly series, {NOISE:.0%} noise; steps judged over {AFTER} runs ({series} series)")
    print(f"  {'rule':<34} {'false/100':>9}   {'5% step: found, delay':<24} 10% step: found, delay")
    _print_nightly("fixed -5% vs previous run", *nightly(fixed_rule, series, 1))
    _print_nightly(
        f"noise band ({stats.noise.Z:g} x MAD sd, last {stats.noise.WINDOW})",
        *nightly(band_rule, series, 1),
    )
    _print_nightly("change points (ruptures BinSeg)", *cp_nightly(_binseg, series, 1))


def section_changepoint(series: int) -> None:
    print("2. change-point libraries on the same series (false per 100 runs; found, delay)")
    detectors: list[tuple[str, Callable[[np.ndarray], list[int]]]] = [
        ("ruptures BinSeg l2 (chosen)", _binseg),
        ("ruptures PELT l2", _pelt),
    ]
    try:
        import signal_processing_algorithms  # noqa: F401
    except ImportError:
        print("  (signal_processing_algorithms not importable here: it pins numpy<2)")
    else:
        detectors.append(("MongoDB E-Divisive (p=0.05)", _edivisive))
    for name, detect in detectors:
        start = time.perf_counter()
        per100, det = cp_nightly(detect, series, 2)
        _print_nightly(f"{name} [{time.perf_counter() - start:.0f} s]", per100, det)


def paired_sample(
    rng: np.random.Generator, n: int, p_bf16: float, discordant: float, drop: float
) -> stats.PairedCounts:
    """Problems BF16 solves with p_bf16; FP8 differs on `discordant` of them, net `drop`."""
    p_bf16_only = (discordant + drop) / 2
    p_fp8_only = (discordant - drop) / 2
    p_both = p_bf16 - p_bf16_only
    p_neither = 1 - p_both - p_bf16_only - p_fp8_only
    both, fp8_only, bf16_only, neither = rng.multinomial(
        n, [p_both, p_fp8_only, p_bf16_only, p_neither]
    )
    return stats.PairedCounts(int(both), int(fp8_only), int(bf16_only), int(neither))


def section_accuracy(reps: int) -> None:
    print(f"3. FP8 vs BF16 accuracy, BF16 at 75%, FP8 differs on 8% of problems ({reps} draws)")
    print(f"  {'n':>5} {'drop':>5}   {'paired McNemar':>14}   {'unpaired 2 estimates':>20}   "
          f"{'point rule fp8 < bf16 - 2pt':>27}")
    rng = np.random.default_rng(3)
    for n in (250, 1319):
        for drop in (0.0, 0.03):
            paired = unpaired = point = 0
            for _ in range(reps):
                c = paired_sample(rng, n, 0.75, 0.08, drop)
                point += c.fp8_rate < c.bf16_rate - 0.02  # today's gate on the same problems
                if stats.mcnemar_exact(c.fp8_only, c.bf16_only) < 0.05 and c.bf16_only > c.fp8_only:
                    paired += 1
                # unpaired: the same accuracies from two independent samples of the problems
                fp8 = stats.Proportion(int(rng.binomial(n, 0.75 - drop)), n)
                bf16 = stats.Proportion(int(rng.binomial(n, 0.75)), n)
                if stats.unpaired_difference(fp8, bf16).high < 0:
                    unpaired += 1
            what = "type-I" if drop == 0 else "power"
            print(
                f"  {n:>5} {drop * 100:4.0f}pt   {paired / reps * 100:13.1f}%   "
                f"{unpaired / reps * 100:19.1f}%   {point / reps * 100:26.1f}%   ({what})"
            )


def section_coverage(reps: int) -> None:
    print(f"4. interval coverage ({reps} draws each; nominal 95%)")
    rng = np.random.default_rng(4)
    for n, p in ((250, 0.5), (250, 0.85), (250, 0.97), (1319, 0.85)):
        ks = rng.binomial(n, p, reps)
        wilson = wald = 0
        cache: dict[int, stats.Interval] = {}
        for k in ks:
            ci = cache.setdefault(int(k), stats.wilson_interval(int(k), n))
            wilson += ci.contains(p)
            half = 1.96 * math.sqrt(k / n * (1 - k / n) / n)
            wald += (k / n - half) <= p <= (k / n + half)
        print(f"  accuracy n={n:<5} p={p:<5} Wilson {wilson / reps:6.1%}   Wald {wald / reps:6.1%}")
    for repeats in (3, 5):
        hit = 0
        for _ in range(reps):
            draws = BASE * (1 + NOISE * rng.standard_normal(repeats))
            s = stats.summarize_repeats(draws.tolist())
            hit += s.ci_low <= BASE <= s.ci_high
        print(f"  throughput mean, {repeats} repeats: t interval covers {hit / reps:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="fewer draws (a smoke run)")
    parser.add_argument("--only", choices=("nightly", "changepoint", "accuracy", "coverage"))
    args = parser.parse_args()
    series, reps = (40, 400) if args.quick else (args.series, args.reps)
    sections: dict[str, Callable[[], None]] = {
        "nightly": lambda: section_nightly(series),
        "changepoint": lambda: section_changepoint(series),
        "accuracy": lambda: section_accuracy(reps),
        "coverage": lambda: section_coverage(reps),
    }
    for name, run in sections.items():
        if args.only in (None, name):
            run()
            print()


if __name__ == "__main__":
    main()
