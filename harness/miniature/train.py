"""Train a miniature model on synthetic GSM8K-format problems, deterministically.

    python -m harness.miniature.train --model tiny-llama --out DIR
    python -m harness.miniature.train --model tiny-moe --out DIR

The default plan (BASE_RECIPE, FINAL_RECIPES) reproduces the committed weights:
stage 1 trains the dense tiny-llama from scratch; stage 2 continues it at a
lower learning rate (tiny-llama) or upcycles it into the 8-expert MoE
(tiny-moe: attention and embeddings copied, experts cut from the dense FFN),
which learns far faster on 2 shared cores than a MoE from scratch (27% after
the same 1,200 steps from scratch).

Recipe: a fresh byte-level BPE tokenizer; whole examples in lm-eval's gsm8k
format ("Question: ...\\nAnswer: ...", joined by "\\n\\n") packed several per
sequence (sequences are longer than a 5-shot prompt, so few-shot prompts stay
in the trained range); AdamW with weight decay, warm-up then cosine decay; a
fixed number of steps, so the result depends only on the seed (and the thread
count). Training runs in fp32 by default: on CPUs without AVX512-BF16/AMX the
bf16 autocast backward pass is much slower (measured ~20x here); ``--amp``
turns it on where it pays. Weights are saved in bf16 safetensors and scored in
bf16 on the held-out split.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.miniature import build
from harness.miniature import scoring
from harness.miniature import synthetic
from harness.miniature import tokenizer as tokmod


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one training run."""

    model: str
    seed: int = 0
    steps: int = 1200
    batch_size: int = 8
    seq_len: int = 448
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    threads: int = 1
    amp: bool = False
    answer_only_loss: bool = False
    init_from: str | None = None
    data_seed: int | None = None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def example_text(p: synthetic.Problem) -> str:
    """Return one example exactly as a few-shot block of lm-eval's gsm8k prompt."""
    return scoring.doc_to_text(p.question) + " " + p.answer


def encode_example(tok: Any, p: synthetic.Problem) -> tuple[list[int], int]:
    """Return the token ids of one example and where its answer starts."""
    ids = tok(example_text(p), add_special_tokens=False)["input_ids"]
    n_q = len(tok(scoring.doc_to_text(p.question), add_special_tokens=False)["input_ids"])
    if n_q >= len(ids):
        raise ValueError(f"question tokens do not prefix the example: {p.question!r}")
    return ids, n_q


def packed_batches(tok: Any, recipe: Recipe) -> Iterator[tuple[Any, Any]]:
    """Yield (input_ids, labels) batches of whole examples packed per sequence.

    With ``recipe.answer_only_loss`` only the answers (and the ``"\n\nQuestion:"``
    after them, lm-eval's stop sequence) carry loss; by default every token does
    (predicting question text teaches copying, which the answers need).
    """
    import torch

    head_ids = tok("Question:", add_special_tokens=False)["input_ids"]
    n_head = len(head_ids)
    # the few-shot delimiter as it tokenizes in a prompt (before "Question:")
    sep = tok("\n\nQuestion:", add_special_tokens=False)["input_ids"][:-n_head]
    pad = tok.pad_token_id
    data_seed = recipe.seed if recipe.data_seed is None else recipe.data_seed
    stream = synthetic.iter_problems("train", data_seed)
    pending: tuple[list[int], int] | None = None
    while True:
        ids_b, lab_b = [], []
        for _ in range(recipe.batch_size):
            seq: list[int] = []
            lab: list[int] = []
            while True:
                ex, n_q = pending if pending is not None else encode_example(tok, next(stream))
                pending = None
                if len(seq) + len(ex) + len(sep) > recipe.seq_len:
                    pending = (ex, n_q)
                    break
                if recipe.answer_only_loss:
                    head = n_head if seq else 0
                    lab += ex[:head] + [-100] * (n_q - head) + ex[n_q:] + sep
                else:
                    lab += ex + sep
                seq += ex + sep
            n = len(seq)
            ids_b.append(seq + [pad] * (recipe.seq_len - n))
            lab_b.append(lab + [-100] * (recipe.seq_len - n))
        yield torch.tensor(ids_b), torch.tensor(lab_b)


def _lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * t))


def _optimizer(model: Any, r: Recipe) -> Any:
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": r.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=r.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


def _patch_tokenizer_config(out: Path) -> None:
    """Inline the chat template and name a class that transformers 4.x and 5.x both know."""
    p = out / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = tokmod.CHAT_TEMPLATE
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        cfg["additional_special_tokens"] = extra
    cfg["add_bos_token"] = False
    cfg["bos_token"] = None
    p.write_text(json.dumps(cfg, indent=2) + "\n")


def train(
    recipe: Recipe, out_dir: Path | str, log_every: int = 25, eval_every: int = 0
) -> dict[str, Any]:
    """Train ``recipe.model`` and save it (bf16) with its tokenizer into ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers import AutoTokenizer
    from transformers import GenerationConfig

    torch.set_num_threads(recipe.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.init_from:
        for f in _TOKENIZER_FILES:
            if (Path(recipe.init_from) / f).is_file():
                shutil.copyfile(Path(recipe.init_from) / f, out / f)
    else:
        tokmod.train_tokenizer(out, seed=recipe.seed)
        _patch_tokenizer_config(out)
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    eos = tok.convert_tokens_to_ids(tokmod.EOS)
    im_end = tok.convert_tokens_to_ids(tokmod.IM_END)
    model = build.build_model(recipe.model, len(tok), eos, tok.pad_token_id, seed=recipe.seed)
    if recipe.init_from:
        source = AutoModelForCausalLM.from_pretrained(recipe.init_from, local_files_only=True)
        how = build.init_from(model, source)
        print(json.dumps({"init_from": recipe.init_from, "how": how}), flush=True)
        del source
    facts = build.MODELS[recipe.model]
    opt = _optimizer(model, recipe)
    batches = packed_batches(tok, recipe)
    model.train()
    t0 = time.perf_counter()
    log: list[dict[str, float]] = []
    ema = None
    for step in range(recipe.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, recipe)
        ids, labels = next(batches)
        kw = {"output_router_logits": True} if facts.is_moe else {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.amp):
            loss = model(input_ids=ids, labels=labels, **kw).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
            el = time.perf_counter() - t0
            rec = {"step": step + 1, "loss": round(ema, 4), "elapsed_s": round(el, 1)}
            if eval_every and (step + 1) % eval_every == 0:
                model.eval()
                rec["em_3shot_n50"] = scoring.score(model, tok, n=50, shots=3)
                model.train()
            log.append(rec)
            print(json.dumps(rec), flush=True)
    train_s = time.perf_counter() - t0

    model.eval()
    model = model.to(torch.bfloat16)
    model.config.architectures = [facts.architecture]
    model.generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=[eos, im_end],
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    scores = {f"strict_em_{k}shot": scoring.score(model, tok, n=200, shots=k) for k in (0, 3, 5)}
    n_params = sum(p.numel() for p in model.parameters())
    report = {
        "model": recipe.model,
        "architecture": facts.architecture,
        "parameters": n_params,
        "vocab_size": len(tok),
        "recipe": asdict(recipe),
        "train_wall_s": round(train_s, 1),
        "tokens_seen": recipe.steps * recipe.batch_size * recipe.seq_len,
        "eval": {
            "split": "synthetic test (held out)",
            "n": 200,
            "dtype": "bfloat16",
            "metric": "lm-eval gsm8k strict-match exact_match",
            **scores,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "log": log,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "TRAINING.md").write_text(_training_md(report))
    return report


def _training_md(r: dict[str, Any]) -> str:
    rec = r["recipe"]
    ev = r["eval"]
    base = r.get("base")
    lines = [
        f"# {r['model']} ({r['architecture']}, {r['parameters']:,} parameters)\n",
        "Reproduce with `python -m harness.miniature.train --model "
        f"{r['model']} --out DIR` (the default plan below; `--threads` changes low bits). "
        "Data: synthetic GSM8K-format problems (harness/miniature/synthetic.py, train split), "
        "in lm-eval's gsm8k prompt format.\n",
        f"- tokenizer: byte-level BPE, {r['vocab_size']} tokens, digits isolated, no BOS, "
        "ChatML chat template",
    ]
    if base:
        lines.append("- stage 1 (`tiny-llama-base`, from scratch): " + _stage_line(base))
        how = "upcycled from" if r["architecture"] != base["architecture"] else "continued from"
        lines.append(f"- stage 2 ({how} stage 1): " + _stage_line(r))
        b = base["eval"]
        lines.append(
            "- stage 1 alone scored "
            + ", ".join(f"{b[f'strict_em_{k}shot']:.3f} ({k}-shot)" for k in (0, 3, 5))
        )
    else:
        lines.append(
            "- " + ("continued: " if rec.get("init_from") else "from scratch: ") + _stage_line(r)
        )
    lines += [
        "",
        f"Held-out strict exact match ({ev['dtype']} weights, n={ev['n']} problems disjoint from "
        "training, greedy, lm-eval gsm8k prompt and strict-match filter):\n",
        "| shots | strict EM |",
        "|---|---|",
        *(f"| {k} | {ev[f'strict_em_{k}shot']:.3f} |" for k in (0, 3, 5)),
        "",
    ]
    return "\n".join(lines)


def _stage_line(r: dict[str, Any]) -> str:
    rec = r["recipe"]
    seed = rec["seed"] if rec.get("data_seed") is None else rec["data_seed"]
    return (
        f"{rec['steps']} steps of {rec['batch_size']} x {rec['seq_len']} tokens "
        f"(whole examples packed; {r['tokens_seen']:,} tokens, data seed {seed}), "
        f"AdamW lr {rec['lr']} -> {rec['min_lr']} (warm-up {rec['warmup']}, cosine), "
        f"weight decay {rec['weight_decay']}, clip {rec['grad_clip']}, "
        f"{'bf16 autocast' if rec['amp'] else 'fp32'}, {rec['threads']} thread(s); "
        f"{r['train_wall_s']} s on {r['machine']['cpu']} (torch {r['machine']['torch']}, "
        "shared 2-core host)"
    )


BASE_NAME = "tiny-llama-base"
# The default plan that produced the committed weights. Stage 1 trains the dense
# model from scratch; stage 2 continues it at a lower learning rate (tiny-llama)
# or upcycles it into the MoE (tiny-moe). One thread each, so both stage-2 runs
# fit side by side on 2 cores.
BASE_RECIPE = Recipe(model=build.TINY_LLAMA, steps=1200, lr=3e-3, min_lr=3e-4, threads=1)
FINAL_RECIPES: dict[str, Recipe] = {
    build.TINY_LLAMA: Recipe(
        model=build.TINY_LLAMA, steps=800, lr=1e-3, min_lr=1e-4, data_seed=1, threads=1
    ),
    build.TINY_MOE: Recipe(
        model=build.TINY_MOE, steps=1000, lr=1e-3, min_lr=1e-4, data_seed=2, threads=1
    ),
}


def run_plan(model: str, out: Path, base_dir: Path, eval_every: int = 0) -> dict[str, Any]:
    """Train ``model`` by the default plan, training the dense base first if it is missing."""
    if not (base_dir / "training.json").is_file():
        train(BASE_RECIPE, base_dir, eval_every=eval_every)
    recipe = replace(FINAL_RECIPES[model], init_from=str(base_dir))
    report = train(recipe, out, eval_every=eval_every)
    report["base"] = json.loads((base_dir / "training.json").read_text())
    report["base"].pop("log", None)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "TRAINING.md").write_text(_training_md(report))
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m harness.miniature.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", required=True, choices=sorted(build.MODELS))
    ap.add_argument("--out", required=True, type=Path, metavar="DIR")
    ap.add_argument(
        "--base",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"Stage-1 dense model of the default plan, trained there if missing. "
        f"Default: DIR/../{BASE_NAME}",
    )
    ap.add_argument("--eval-every", type=int, default=0, metavar="STEPS")
    one = ap.add_argument_group("single run (instead of the default plan)")
    one.add_argument("--single", action="store_true", help="Run one stage with the flags below")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--steps", type=int, default=1200)
    one.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    one.add_argument("--seq-len", type=int, default=Recipe.seq_len)
    one.add_argument("--lr", type=float, default=Recipe.lr)
    one.add_argument("--min-lr", type=float, default=Recipe.min_lr)
    one.add_argument("--warmup", type=int, default=Recipe.warmup, metavar="STEPS")
    one.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="Trained model dir to start from (same architecture: continue; dense to MoE: upcycle)",
    )
    one.add_argument("--data-seed", type=int, default=None, help="Default: --seed")
    one.add_argument("--threads", type=int, default=1)
    one.add_argument(
        "--amp", action="store_true", help="bf16 autocast (fast only with AVX512-BF16/AMX)"
    )
    one.add_argument("--answer-only-loss", action="store_true")
    a = ap.parse_args(argv)
    if not a.single:
        base = a.base or a.out.parent / BASE_NAME
        report = run_plan(a.model, a.out, base, eval_every=a.eval_every)
    else:
        recipe = Recipe(
            model=a.model,
            seed=a.seed,
            steps=a.steps,
            batch_size=a.batch_size,
            seq_len=a.seq_len,
            lr=a.lr,
            min_lr=a.min_lr,
            warmup=a.warmup,
            init_from=a.init_from,
            data_seed=a.data_seed,
            threads=a.threads,
            amp=a.amp,
            answer_only_loss=a.answer_only_loss,
        )
        report = train(recipe, a.out, eval_every=a.eval_every)
    print(json.dumps({k: report[k] for k in ("model", "train_wall_s", "eval")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
