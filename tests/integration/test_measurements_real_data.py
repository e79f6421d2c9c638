"""The measurement tools on real Gaudi measurements: DeepSeek-R1-0528 EP16 (Gaudi2) and gpt-oss-20b.

The sets are read where they are (``$HARNESS_SHARED_DATA`` or ``<repo>/../shared/data``), never
copied into the repo; the tests skip when they are absent. Expected values are computed here from
the original JSON with the standard library, independently of the tools' reader.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.errors import MeasurementError
from harness.measurements import Severity
from harness.measurements import check
from harness.measurements import diff
from harness.measurements import expand
from harness.measurements import postprocess
from harness.measurements import unify

REPO = Path(__file__).resolve().parents[2]
DATA = (
    Path(os.environ.get("HARNESS_SHARED_DATA", REPO.parent / "shared" / "data"))
    / "inc-measurements"
)
DS = DATA / "deepseek-r1-0528-g2-ep16"
GPT = DATA / "gpt-oss-20b-tp1"
DS_PREFIX = "inc_measure_output_hooks_maxabs"
GPT_PREFIX = "inc_output_hooks_maxabs"
EXPERTS = 256
LOCAL = 16

pytestmark = pytest.mark.skipif(
    not (DS.is_dir() and GPT.is_dir()),
    reason=f"real measurement sets not found under {DATA} (set HARNESS_SHARED_DATA)",
)
_EXPERT = re.compile(r"^(.*\.(?:w13_list|w2_list))\.(\d+)$")


def _load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _emax(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        return [_emax(x, y) for x, y in zip(a, b, strict=True)]
    return max(a, b)


def _is_op(name: str) -> bool:
    return name.endswith("mlp.experts.moe_op")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real")


@pytest.fixture(scope="module")
def originals() -> list[dict[str, Any]]:
    return [_load(DS / f"{DS_PREFIX}_{r}_16.json")["Nodes"] for r in range(16)]


@pytest.fixture(scope="module")
def unified(work: Path) -> Path:
    out = work / "tp1"
    unify(DS, out, ranks=1, expert_parallel=True, skip_scales=True)
    return out


@pytest.fixture(scope="module")
def ep4(work: Path) -> Path:
    """EP16 unified to EP4 with -u: 4 rank-local sets of 64 experts (written by the tools)."""
    out = work / "ep4"
    unify(DS, out, ranks=4, expert_parallel=True, skip_scales=True)
    return out


@pytest.fixture(scope="module")
def expanded16(work: Path, unified: Path) -> Path:
    out = work / "ep16"
    expand(unified, out, 16)
    return out


def test_ep16_to_one_rank_gathers_every_expert(
    unified: Path, originals: list[dict[str, Any]]
) -> None:
    doc = _load(unified / f"{DS_PREFIX}_0_1.json")
    assert (doc["LocalRank"], doc["GlobalRank"], doc["Mode"]) == (-1, None, "DynamicRange")
    nodes = doc["Nodes"]
    experts = sum(1 for n in originals[0] if _EXPERT.match(n))
    assert len(nodes) == len(originals[0]) + 15 * experts == 30547
    for name, node in originals[0].items():
        m = _EXPERT.match(name)
        if m:
            for k in range(16):
                assert nodes[f"{m[1]}.{k * LOCAL + int(m[2])}"] == originals[k][name]
        elif _is_op(name):
            outs = nodes[name]["outputs"]
            assert len(outs) == 1 + EXPERTS
            assert outs[0] == [[max(o[name]["outputs"][0][0][0] for o in originals)]]
            assert outs[1:] == [e for o in originals for e in o[name]["outputs"][1:]]
        else:
            want = node
            for o in originals[1:]:
                want = {
                    k: (
                        _emax(v, o[name][k])
                        if k != "params"
                        else {p: _emax(w, o[name][k][p]) for p, w in v.items()}
                    )
                    for k, v in want.items()
                }
            assert nodes[name] == want, name
    npz = np.load(unified / f"{DS_PREFIX}_0_1.npz", allow_pickle=True)["arr_0"].item()
    assert npz["LocalRank"] == -1 and len(npz["Nodes"]) == 30547
    arr = npz["Nodes"]["model.layers.3.mlp.experts.moe_op"]["outputs"][200]
    assert arr.dtype == np.float32 and arr.shape == (1, 1)
    assert float(arr[0, 0]) == nodes["model.layers.3.mlp.experts.moe_op"]["outputs"][200][0][0]


def test_expand_back_to_16_gives_each_rank_its_own_amax(
    expanded16: Path, unified: Path, originals: list[dict[str, Any]]
) -> None:
    base = _load(unified / f"{DS_PREFIX}_0_1.json")["Nodes"]
    assert len(list(expanded16.glob("*.json"))) == 32  # 16 ranks + 16 module lists
    for r in (0, 5, 15):
        doc = _load(expanded16 / f"{DS_PREFIX}_{r}_16.json")
        assert doc["LocalRank"] == r
        for name, node in doc["Nodes"].items():
            if _is_op(name):
                assert node["outputs"][1:] == originals[r][name]["outputs"][1:]
                assert node["outputs"][0] == base[name]["outputs"][0]
            else:
                assert node == base[name]


def test_expand_to_32_slices_eight_experts_per_rank(work: Path, unified: Path) -> None:
    out = work / "ep32"
    expand(unified, out, 32)
    base = _load(unified / f"{DS_PREFIX}_0_1.json")["Nodes"]
    for r in (0, 31):
        npz = np.load(out / f"{DS_PREFIX}_{r}_32.npz", allow_pickle=True)["arr_0"].item()
        assert npz["LocalRank"] == r
        outs = npz["Nodes"]["model.layers.10.mlp.experts.moe_op"]["outputs"]
        want = base["model.layers.10.mlp.experts.moe_op"]["outputs"]
        assert [float(a[0, 0]) for a in outs] == [want[0][0][0]] + [
            e[0][0] for e in want[1 + 8 * r : 9 + 8 * r]
        ]


@pytest.mark.parametrize("ranks", [4, 8])
def test_ep16_to_fewer_ranks_with_expert_parallel_rules(
    work: Path, ep4: Path, originals: list[dict[str, Any]], ranks: int
) -> None:
    out = ep4 if ranks == 4 else work / f"ep{ranks}"
    if ranks != 4:
        unify(DS, out, ranks=ranks, expert_parallel=True, skip_scales=True)
    size = 16 // ranks
    for g in (0, ranks - 1):
        doc = _load(out / f"{DS_PREFIX}_{g}_{ranks}.json")
        assert doc["LocalRank"] == g
        nodes = doc["Nodes"]
        name = "model.layers.7.mlp.experts.moe_op.w2_list.3"
        for k in range(size):
            assert (
                nodes[f"model.layers.7.mlp.experts.moe_op.w2_list.{k * LOCAL + 3}"]
                == originals[g * size + k][name]
            )
        op = "model.layers.7.mlp.experts.moe_op"
        assert nodes[op]["outputs"][1:] == [
            e for k in range(size) for e in originals[g * size + k][op]["outputs"][1:]
        ]
    report = check(out, world=ranks)
    assert (
        report.ok and "expert-parallel" in report.codes()
    )  # rank-local experts again, for EP{ranks}


def _member(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read("arr_0.npy")


def test_card_groups_equal_to_rank_groups(work: Path, ep4: Path) -> None:
    groups = "--".join(",".join(str(g * 4 + k) for k in range(4)) for g in range(4))
    unify(DS, work / "g4", groups=groups, expert_parallel=True, skip_scales=True)
    names = sorted(p.name for p in ep4.iterdir())
    assert names == sorted(p.name for p in (work / "g4").iterdir())
    for n in names:
        a, b = ep4 / n, work / "g4" / n
        assert (
            (_member(a) == _member(b)) if n.endswith(".npz") else (a.read_bytes() == b.read_bytes())
        ), n


def _derive_tp4(directory: Path) -> list[dict[str, Any]]:
    """A TP4 set from the gpt-oss measurements: each rank scales each node by its own factor."""
    src = _load(GPT / f"{GPT_PREFIX}_0_1.json")
    mod_list = _load(GPT / f"{GPT_PREFIX}_0_1_mod_list.json")
    factors = (0.5, 1.0, 0.125, 0.25, 0.0625)  # powers of two: exact in float32, no overflow

    def scaled(x: Any, f: float) -> Any:
        return [scaled(e, f) for e in x] if isinstance(x, list) else x * f

    docs = []
    directory.mkdir()
    for r in range(4):
        nodes = {}
        for i, (name, node) in enumerate(src["Nodes"].items()):
            f = factors[(i * 7 + r * 3) % len(factors)]
            nodes[name] = {
                k: ({p: scaled(w, f) for p, w in v.items()} if k == "params" else scaled(v, f))
                for k, v in node.items()
            }
        doc = {"GlobalRank": None, "LocalRank": r, "Mode": "DynamicRange", "Nodes": nodes}
        with open(directory / f"{GPT_PREFIX}_{r}_4.json", "w") as fh:
            json.dump(doc, fh, indent=4)
        arrays = {
            n: {
                k: (
                    {p: np.array(w, np.float32) for p, w in v.items()}
                    if k == "params"
                    else [np.array(e, np.float32) for e in v]
                )
                for k, v in node.items()
            }
            for n, node in nodes.items()
        }
        np.savez(directory / f"{GPT_PREFIX}_{r}_4.npz", {**doc, "Nodes": arrays})
        with open(directory / f"{GPT_PREFIX}_{r}_4_mod_list.json", "w") as fh:
            json.dump(mod_list, fh)
        docs.append(nodes)
    return docs


def test_plain_tp_unify_without_expert_rules(work: Path) -> None:
    tp4 = work / "gpt-tp4"
    docs = _derive_tp4(tp4)
    assert check(tp4).ok
    unify(tp4, work / "gpt-tp2", ranks=2)
    for g in range(2):
        nodes = _load(work / "gpt-tp2" / f"{GPT_PREFIX}_{g}_2.json")["Nodes"]
        for name in docs[0]:
            a, b = docs[2 * g][name], docs[2 * g + 1][name]
            want = {
                k: (
                    {p: _emax(w, b[k][p]) for p, w in v.items()}
                    if k == "params"
                    else _emax(v, b[k])
                )
                for k, v in a.items()
            }
            assert nodes[name] == want, name
    # a second step down gives the max over all four
    unify(work / "gpt-tp2", work / "gpt-tp1", ranks=1)
    unify(tp4, work / "gpt-tp1-direct", ranks=1)
    assert diff(work / "gpt-tp1", work / "gpt-tp1-direct").identical


def test_expand_of_an_expanded_set_is_refused(work: Path, expanded16: Path) -> None:
    with pytest.raises(MeasurementError, match="this is an expanded set"):
        expand(expanded16, work / "again", 32)
    assert not (work / "again").exists()


def test_postprocess_deepseek_on_the_real_set(work: Path, originals: list[dict[str, Any]]) -> None:
    out = work / "post"
    result = postprocess(DS, out, deepseek=True)
    assert result.notes[0].startswith("61 attention blocks per file")
    for r in (0, 11):
        nodes = _load(out / f"{DS_PREFIX}_{r}_16.json")["Nodes"]
        changed = set()
        for layer in range(61):
            p = f"model.layers.{layer}.self_attn.mla_attn.impl"
            latent = originals[r][f"{p}.latent_cache_k"]["inputs"][0]
            assert nodes[f"{p}.matmul_qk"]["inputs"] == [
                originals[r][f"{p}.matmul_qk"]["inputs"][0],
                latent,
            ]
            assert nodes[f"{p}.matmul_av"]["inputs"] == [
                originals[r][f"{p}.matmul_av"]["inputs"][0],
                latent,
            ]
            changed |= {f"{p}.matmul_qk", f"{p}.matmul_av"}
        assert {n: v for n, v in nodes.items() if n not in changed} == {
            n: v for n, v in originals[r].items() if n not in changed
        }
    assert check(out).ok


def test_postprocess_gpt_oss_uses_its_k_and_v_caches(work: Path) -> None:
    postprocess(GPT, work / "gpt-post")
    before = _load(GPT / f"{GPT_PREFIX}_0_1.json")["Nodes"]
    after = _load(work / "gpt-post" / f"{GPT_PREFIX}_0_1.json")["Nodes"]
    p = "model.layers.5.attn.attn.impl"
    assert after[f"{p}.matmul_qk"]["inputs"][1] == before[f"{p}.k_cache"]["inputs"][0]
    assert after[f"{p}.matmul_av"]["inputs"][1] == before[f"{p}.v_cache"]["inputs"][0]


def test_check_on_the_real_sets() -> None:
    ds = check(DS, device="g2")
    assert ds.ok, ds.render()
    assert ds.codes() == {"expert-parallel", "unmeasured-module"}
    assert ds.sets[0]["experts_per_rank"] == LOCAL
    gpt = check(GPT)
    assert gpt.ok and gpt.codes() == {"unmeasured-module"}


def test_check_on_derived_real_sets(work: Path, unified: Path, ep4: Path) -> None:
    assert check(unified, world=1).ok
    wrong = check(ep4, world=8)  # rank-local experts of EP4 cannot serve EP8
    assert [f.code for f in wrong.errors] == ["expert-parallel"]
    expand(unified, work / "ep4-expanded", 4)  # small: checking 30k-node files costs ~0.3 s each
    report = check(work / "ep4-expanded", world=4)
    assert report.ok and "expanded" in report.codes()


# ---------------------------------------------------------------------------------------------
# Corrupted copies: each corruption is detected


def _linked_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        os.symlink(p, dst / p.name)
    return dst


def _replace(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


def _ep4_missing_rank(d: Path) -> None:
    for ext in ("json", "npz"):
        (d / f"{DS_PREFIX}_2_4.{ext}").unlink()


def _ep4_duplicate_rank(d: Path) -> None:
    for ext in ("json", "npz"):
        (d / f"{DS_PREFIX}_3_4.{ext}").unlink()
        os.symlink(os.readlink(d / f"{DS_PREFIX}_1_4.{ext}"), d / f"{DS_PREFIX}_3_4.{ext}")


def _ep4_stray_world(d: Path) -> None:
    shutil.copy(DS / f"{DS_PREFIX}_3_16.json", d / f"{DS_PREFIX}_3_16.json")


def _ep4_node_missing(d: Path) -> None:
    doc = _load(d / f"{DS_PREFIX}_1_4.json")
    doc["Nodes"].pop("model.layers.30.mlp.shared_experts.down_proj")
    _replace(d / f"{DS_PREFIX}_1_4.json", json.dumps(doc))
    (d / f"{DS_PREFIX}_1_4.npz").unlink()  # (its stale NPZ would be a second finding)


def _gpt_edit(fn, npz: bool = True):
    """Edit the gpt-oss rank; rewrite its NPZ to match (as INC would) unless ``npz`` is False."""

    def corrupt(d: Path) -> None:
        doc = _load(GPT / f"{GPT_PREFIX}_0_1.json")
        fn(doc["Nodes"])
        _replace(d / f"{GPT_PREFIX}_0_1.json", json.dumps(doc, allow_nan=True))
        if npz:
            arrays = {
                n: {
                    k: (
                        {p: np.array(w, np.float32) for p, w in v.items()}
                        if k == "params"
                        else [np.array(e, np.float32) for e in v]
                    )
                    for k, v in node.items()
                }
                for n, node in doc["Nodes"].items()
            }
            (d / f"{GPT_PREFIX}_0_1.npz").unlink()
            np.savez(d / f"{GPT_PREFIX}_0_1.npz", {**doc, "Nodes": arrays})

    return corrupt


def _set(node: str, key: str, value: float):
    def edit(nodes: dict[str, Any]) -> None:
        nodes[node][key][0] = [[value]]

    return edit


def _gpt_truncated(d: Path) -> None:
    _replace(d / f"{GPT_PREFIX}_0_1.json", (GPT / f"{GPT_PREFIX}_0_1.json").read_text()[:5000])


def _gpt_foreign_npz(d: Path) -> None:
    (d / f"{GPT_PREFIX}_0_1.npz").unlink()
    os.symlink(DS / f"{DS_PREFIX}_0_16.npz", d / f"{GPT_PREFIX}_0_1.npz")


def _gpt_no_suffix(d: Path) -> None:
    shutil.copy(GPT / f"{GPT_PREFIX}_0_1.json", d / f"{GPT_PREFIX}.json")


def _gpt_second_prefix(d: Path) -> None:
    os.symlink(GPT / f"{GPT_PREFIX}_0_1.json", d / "other_hooks_maxabs_0_1.json")


def _gpt_gaudi3_scales(d: Path) -> None:
    nodes = _load(GPT / f"{GPT_PREFIX}_0_1.json")["Nodes"]
    scales = {
        n: {"inputs": [0.125 for _ in node["inputs"]], "outputs": [0.125], "params": {}}
        for n, node in nodes.items()
    }
    doc = {"GlobalRank": None, "LocalRank": 0, "Mode": "Scale", "Nodes": scales}
    (d / f"{GPT_PREFIX}_MAXABS_HW_0_1.json").write_text(json.dumps(doc))


_MOE = "model.layers.4.mlp.experts.moe_op"
CORRUPTIONS = [
    ("ep4-missing-rank", None, _ep4_missing_rank, "missing-rank", Severity.ERROR),
    ("ep4-duplicate-rank", None, _ep4_duplicate_rank, "duplicate-rank", Severity.ERROR),
    ("ep4-stray-world", None, _ep4_stray_world, "world-mismatch", Severity.ERROR),
    ("ep4-node-missing", None, _ep4_node_missing, "node-set-differs", Severity.ERROR),
    (
        "gpt-nan",
        GPT,
        _gpt_edit(_set("model.layers.3.attn.qkv", "inputs", float("nan"))),
        "non-finite",
        Severity.ERROR,
    ),
    (
        "gpt-negative",
        GPT,
        _gpt_edit(_set("model.layers.3.attn.qkv", "inputs", -2.0)),
        "negative",
        Severity.ERROR,
    ),
    (
        "gpt-json-npz",
        GPT,
        _gpt_edit(_set("model.layers.3.attn.qkv", "inputs", 99.0), npz=False),
        "npz-json-mismatch",
        Severity.ERROR,
    ),
    ("gpt-truncated", GPT, _gpt_truncated, "unreadable", Severity.ERROR),
    ("gpt-foreign-npz", GPT, _gpt_foreign_npz, "npz-json-mismatch", Severity.ERROR),
    ("gpt-no-suffix", GPT, _gpt_no_suffix, "bad-name", Severity.ERROR),
    ("gpt-second-prefix", GPT, _gpt_second_prefix, "mixed-prefix", Severity.ERROR),
    (
        "gpt-unrouted",
        GPT,
        _gpt_edit(lambda n: n[_MOE]["outputs"].__setitem__(7, [[0.0]])),
        "unrouted-expert",
        Severity.WARNING,
    ),
    ("gpt-gaudi3-scales", GPT, _gpt_gaudi3_scales, "device-mismatch", Severity.ERROR),
]


@pytest.mark.parametrize(
    ("name", "source", "corrupt", "code", "severity"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS]
)
def test_check_detects_each_corruption(
    work: Path, ep4: Path, name: str, source: Path | None, corrupt, code: str, severity: Severity
) -> None:
    d = _linked_copy(source or ep4, work / f"corrupt-{name}")
    corrupt(d)
    report = check(d, device="g2")
    found = [f for f in report.findings if f.code == code]
    assert found, report.render()
    assert found[0].severity is severity
    assert report.ok is (severity is not Severity.ERROR)
