"""One CPU calibration rank: `python -m harness.calibration.worker --spec S --rank R`.

Every rank of a layout runs this at once (gloo over loopback). Steps, as calibrate_model.sh:

1. prompts from the calibration pickle (step 1);
2. MEASURE into a private per-rank dump dir, so INC's backup-folder trap (it moves any file with
   the same prefix into `backup_<prefix>_<date>/`) can never touch another rank's files; then the
   rank's files move into the shared measurement dir;
3. rank 0 postprocesses the gathered set (step 3) while the others wait at a barrier;
4. QUANTIZE with `recalc_scales: true` (the stale-scale trap: INC reuses any existing scale file
   otherwise), writing `<prefix>_hooks_maxabs_<METHOD>_<r>_<w>`; then one prompt through the
   Q/DQ model against the BF16 model, as a sanity figure.

Each rank writes `<work>/rank<r>.json` with its timings and figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from harness.calibration.spec import MEASURE
from harness.calibration.spec import POSTPROCESS
from harness.calibration.spec import QUANTIZE
from harness.calibration.spec import WorkerSpec


def _init(spec: WorkerSpec, rank: int) -> None:
    import torch

    torch.set_num_threads(max(1, spec.threads))
    if spec.world > 1:
        torch.distributed.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{spec.master_port}",
            rank=rank,
            world_size=spec.world,
            timeout=timedelta(seconds=spec.timeout_s),
        )


def _barrier(spec: WorkerSpec) -> None:
    if spec.world > 1:
        import torch

        torch.distributed.barrier()


def _rank_config(spec: WorkerSpec, source: str, rank: int, name: str, **changes: Any) -> Path:
    cfg = json.loads(Path(source).read_text(encoding="utf-8"))
    cfg.update(changes)
    path = spec.rank_dir(rank) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return path


def measure(
    spec: WorkerSpec, rank: int, weights: dict[str, Any], cfg: Any, out: dict[str, Any]
) -> None:
    import torch

    from harness.calibration import inc_cpu
    from harness.calibration import prompts
    from harness.calibration import vllm_model

    t0 = time.monotonic()
    ids = prompts.token_ids(Path(spec.model_dir), Path(spec.dataset), spec.samples,
                            spec.max_seq_len, spec.model_name)
    private = spec.rank_dir(rank) / "measure"
    if private.exists():
        shutil.rmtree(private)
    private.mkdir(parents=True)
    config = _rank_config(spec, spec.measure_config, rank, "measure.json",
                          dump_stats_path=str(private / "inc_output"))
    shard = vllm_model.Shard(rank, spec.world, spec.tp, spec.ep)
    model = inc_cpu.prepare_measure(vllm_model.build(weights, cfg, shard), config)
    t1 = time.monotonic()
    with torch.no_grad():
        for seq in ids:
            model(torch.tensor([seq], dtype=torch.long))
    inc_cpu.finalize(model)
    backups = [p.name for p in private.iterdir() if p.name.startswith("backup_")]
    if backups:
        raise RuntimeError(f"rank {rank}: INC moved files into {backups} in {private}")
    dest = Path(spec.measurement_dir)
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for f in sorted(private.iterdir()):
        if f.is_file():
            shutil.move(str(f), dest / f.name)
            moved.append(f.name)
    expected = f"inc_output_hooks_maxabs_{rank}_{spec.world}.json"
    if expected not in moved:
        raise RuntimeError(
            f"rank {rank}: INC wrote {moved}, not {expected} (rank naming needs WORLD_SIZE and "
            "LOCAL_RANK or torch.distributed)"
        )
    out.update(prompts=len(ids), tokens=sum(len(s) for s in ids), files=moved,
               measure_setup_s=round(t1 - t0, 3), measure_s=round(time.monotonic() - t1, 3))


def postprocess(spec: WorkerSpec, out: dict[str, Any]) -> None:
    """Step 3 in place (the script writes to inc_tmp/ and copies back)."""
    from harness.measurements import postprocess as run_postprocess

    t0 = time.monotonic()
    src = Path(spec.measurement_dir)
    tmp = Path(spec.work_dir) / "inc_tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    run_postprocess(src, tmp, deepseek=spec.deepseek_postprocess)
    for f in tmp.iterdir():
        if f.is_file():
            shutil.copy2(f, src / f.name)
    shutil.rmtree(tmp)
    out["postprocess_s"] = round(time.monotonic() - t0, 3)


def quantize(
    spec: WorkerSpec, rank: int, weights: dict[str, Any], cfg: Any, out: dict[str, Any]
) -> None:
    import torch

    from harness.calibration import inc_cpu
    from harness.calibration import prompts
    from harness.calibration import vllm_model

    t0 = time.monotonic()
    config = _rank_config(spec, spec.quant_config, rank, "quant.json", recalc_scales=True)
    shard = vllm_model.Shard(rank, spec.world, spec.tp, spec.ep)
    reference = vllm_model.build(weights, cfg, shard)
    model = inc_cpu.quantize(vllm_model.build(weights, cfg, shard), config)
    out["quantize_s"] = round(time.monotonic() - t0, 3)
    if spec.dataset:
        seq = prompts.token_ids(Path(spec.model_dir), Path(spec.dataset), 1, spec.max_seq_len,
                                spec.model_name)[0]
        ids = torch.tensor([seq], dtype=torch.long)
        with torch.no_grad():
            ref, qdq = reference(ids).float(), model(ids).float()
        out["qdq_rel_err"] = float((ref - qdq).abs().max() / ref.abs().max().clamp_min(1e-12))
        out["qdq_top1_agree"] = float((ref.argmax(-1) == qdq.argmax(-1)).float().mean())


def run(spec: WorkerSpec, rank: int) -> dict[str, Any]:
    from harness.calibration import checkpoint

    out: dict[str, Any] = {"rank": rank, "world": spec.world, "pid": os.getpid()}
    start = time.monotonic()
    _init(spec, rank)
    weights, cfg = checkpoint.load(spec.model_dir)
    out["startup_s"] = round(time.monotonic() - start, 3)
    if MEASURE in spec.steps:
        measure(spec, rank, weights, cfg, out)
        _barrier(spec)
    if POSTPROCESS in spec.steps:
        if rank == 0:
            postprocess(spec, out)
        _barrier(spec)
    if QUANTIZE in spec.steps:
        quantize(spec, rank, weights, cfg, out)
        _barrier(spec)
    out["total_s"] = round(time.monotonic() - start, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--rank", required=True, type=int)
    args = parser.parse_args(argv)
    spec = WorkerSpec.read(args.spec)
    result = run(spec, args.rank)
    path = spec.result_path(args.rank)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if spec.world > 1:
        import torch

        torch.distributed.destroy_process_group()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
