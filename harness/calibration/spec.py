"""What a CPU rank worker is asked to do, as a JSON file the parent writes and each rank reads."""

from __future__ import annotations

import json
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

MEASURE = "measure"  # step 1 + 2: prompts, INC MEASURE, range files
POSTPROCESS = "postprocess"  # step 3 on the gathered set (rank 0)
QUANTIZE = "quantize"  # step 4: INC QUANTIZE, scale files


@dataclass(frozen=True)
class WorkerSpec:
    """One rank layout, one model, one set of steps; every rank gets the same spec."""

    model_dir: str
    model_name: str  # calibrate_model.sh's folder name (decides the mixtral prompt quirk)
    tp: int
    ep: int
    world: int
    steps: tuple[str, ...]
    measurement_dir: str  # <out>/<model>/<device>: where the set ends up
    work_dir: str  # per-rank INC dump dirs, logs and results
    measure_config: str = ""  # JSON config file for MEASURE (its dump path is replaced per rank)
    quant_config: str = ""  # JSON config file for QUANTIZE (dump path = measurement_dir)
    dataset: str = ""
    samples: int = 0
    max_seq_len: int | None = None
    master_port: int = 0
    threads: int = 1
    deepseek_postprocess: bool = False
    timeout_s: float = 1800.0

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["steps"] = tuple(data["steps"])
        return cls(**data)

    def rank_dir(self, rank: int) -> Path:
        return Path(self.work_dir) / f"rank{rank}"

    def result_path(self, rank: int) -> Path:
        return Path(self.work_dir) / f"rank{rank}.json"
