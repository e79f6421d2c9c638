"""Preflight: is the platform fit to run this cell? Every check says what to do when it is not.

The backend runs its checks (devices, NIC ports, env, Ray, packages, ...) and gathers facts on
every node; this stage adds one check that the nodes agree (driver, firmware, packages,
python, env), with a table of the differences, writes everything to `checks.json`, and fails
with the fix hints in the first line of its message, so the later stages of the cell skip with
the fix visible in the summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness import cluster
from harness import process
from harness.backends.base import Check
from harness.backends.base import CheckStatus
from harness.backends.contracts import PreflightBackend
from harness.cell import Cell
from harness.cluster import ClusterFigures
from harness.cluster import Placement
from harness.errors import StageError
from harness.results import write_atomic
from harness.stages.base import StageContext

NODES_HINT = (
    "install the same driver/firmware, packages and Python on every node and export the same "
    "env before `ray start` (seed 003, 'consistent software stack'); see nodes.md"
)


@dataclass
class NodeProbe:
    """Per-node facts for a cell, and what Ray said about room for it."""

    facts: dict[str, dict[str, Any]]  # by node: "ip/node-id" via Ray, "local" without
    via_ray: bool = False
    figures: ClusterFigures | None = None
    problem: str | None = None  # Ray unreachable, or the placement does not fit (with figures)


def probe_nodes(
    cell: Cell, placement: Placement, spec: dict[str, Any], can_start: bool
) -> NodeProbe:
    """The backend's probe on every node through Ray when the cell needs Ray, else here (or
    on a `pytest -n` unit's leased node, when that is another host's)."""
    if not cluster.uses_ray(cell, int(placement.per_node), os.environ):
        node = process.site()
        if node is None:
            return NodeProbe({"local": cluster.local_facts(spec)})
        try:
            return NodeProbe({node.label: node.facts(spec)}, True)
        except cluster.ClusterError as exc:
            return NodeProbe({}, True, None, f"node {node.label}: {exc}")
    try:
        ray = cluster.shared(cell.backend_options, placement.nodes, placement.bundles[0], can_start)
        figures = ray.figures()
        facts = ray.node_facts(spec, cell.settings.preflight.ray_timeout_s)
    except cluster.ClusterError as exc:
        return NodeProbe({"local": cluster.local_facts(spec)}, True, None, str(exc))
    return NodeProbe(facts, True, figures, cluster.fit_reason(placement, figures))


def shared_facts(facts: Mapping[str, Any], per_node_env: frozenset[str]) -> dict[str, Any]:
    """The probe's facts every node must share: python, packages, importable modules, env."""
    out: dict[str, Any] = {"python": facts.get("python")}
    out.update({f"package.{k}": v for k, v in facts.get("packages", {}).items()})
    out.update({f"module.{k}": v is not None for k, v in facts.get("modules", {}).items()})
    env = facts.get("env", {})
    out.update({f"env.{k}": v for k, v in env.items() if k not in per_node_env})
    return out


def comparable(backend: PreflightBackend, facts: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree between nodes: the shared facts plus the backend's (driver, firmware)."""
    return {**shared_facts(facts, backend.per_node_env), **backend.device_facts(facts)}


def differences(by_node: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Facts whose values are not the same on every node: {fact: {node: value}}."""
    names = sorted({k for facts in by_node.values() for k in facts})
    out = {}
    for name in names:
        values = {node: facts.get(name) for node, facts in by_node.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            out[name] = values
    return out


def difference_table(diffs: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per differing fact, one column per node."""
    if not diffs:
        return ""
    nodes = list(next(iter(diffs.values())))
    lines = ["| fact | " + " | ".join(nodes) + " |", "|---|" + "---|" * len(nodes)]
    for name, values in diffs.items():
        cells = [str(values.get(n)).replace("|", "\\|")[:60] for n in nodes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement_check(by_node: Mapping[str, Mapping[str, Any]]) -> Check:
    """PASS when every node reports the same facts; FAIL with the table of differences."""
    if len(by_node) < 2:
        return Check("nodes.agree", CheckStatus.PASS, f"{len(by_node)} node: nothing to compare")
    diffs = differences(by_node)
    keys = len({k for facts in by_node.values() for k in facts})
    if not diffs:
        return Check("nodes.agree", CheckStatus.PASS, f"{len(by_node)} nodes agree on {keys} facts")
    return Check(
        "nodes.agree",
        CheckStatus.FAIL,
        f"{len(by_node)} nodes differ in {len(diffs)} fact(s): {', '.join(diffs)}",
        NODES_HINT,
        {"differences": diffs, "table": difference_table(diffs)},
    )


def failure(cell_id: str, failed: list[Check]) -> StageError:
    """One StageError: names and fixes on the first line (what later stages show), details
    after, every hint again at the end."""
    fixes = "; ".join(f"{c.name} (fix: {c.hint})" if c.hint else c.name for c in failed)
    details = [f"{c.name}: {c.message}" + (f" -> fix: {c.hint}" if c.hint else "") for c in failed]
    tables = [str(c.facts["table"]) for c in failed if c.facts.get("table")]
    reason = f"{len(failed)} check(s) failed: {fixes}\n  " + "\n  ".join(details + tables)
    hint = " | ".join(c.hint for c in failed if c.hint)
    return StageError(cell_id, "preflight", reason, hint)


def ray_check(probe: NodeProbe, placement: Placement, hint: str) -> Check:
    """Ray reachable, with room for the cell; the `ray status` figures either way."""
    if not probe.via_ray:
        return Check(
            "ray",
            CheckStatus.SKIP,
            "single-node cell: no Ray needed (preflight.use_ray: true checks it anyway)",
        )
    status = probe.figures.render((placement.resource, "CPU")) if probe.figures else ""
    facts: dict[str, object] = {"ray_status": status, "placement": placement.describe()}
    if probe.problem:
        return Check("ray", CheckStatus.FAIL, probe.problem, hint, facts)
    return Check("ray", CheckStatus.PASS, f"fits {placement.describe()}; {status}", "", facts)


def vllm_on_workers(probe: NodeProbe, source_dir: str | None) -> Check:
    """Every Ray node must import vllm (seed 003: `No module named 'vllm'` on a worker)."""
    missing = [n for n, f in probe.facts.items() if not f.get("modules", {}).get("vllm")]
    if not missing:
        return Check(
            "vllm.on_workers", CheckStatus.PASS, f"vllm imports on {', '.join(probe.facts)}"
        )
    src = source_dir or "/workspace/vllm-fork"
    return Check(
        "vllm.on_workers",
        CheckStatus.FAIL,
        f"vllm is not importable on {', '.join(missing)}: Ray workers there fail with "
        "\"No module named 'vllm'\"",
        f"on those nodes: echo 'PYTHONPATH=$PYTHONPATH:{src}' | tee -a /etc/environment && "
        "source /etc/environment, then restart Ray there (seed 003)",
        {"missing_on": missing},
    )


def checks_for(ctx: StageContext) -> list[Check]:
    """The backend's checks on its probe, then Ray, vLLM on the workers, and node agreement."""
    backend, cell = ctx.backend, ctx.cell
    placement = backend.ray_placement(cell)
    probe = probe_nodes(cell, placement, backend.preflight_spec(cell), backend.starts_local_ray)
    checks = list(backend.preflight_checks(cell, probe.facts))
    checks.append(ray_check(probe, placement, backend.ray_hint))
    if probe.via_ray:
        checks.append(vllm_on_workers(probe, cell.settings.preflight.vllm_source_dir))
    checks.append(agreement_check({n: comparable(backend, f) for n, f in probe.facts.items()}))
    return checks


def run(ctx: StageContext) -> None:
    """Run every check; any FAIL fails the stage with the fixes."""
    checks = checks_for(ctx)
    agree = checks[-1]
    path = ctx.workdir / "checks.json"
    write_atomic(path, json.dumps([c.as_dict() for c in checks], indent=2, default=str))
    ctx.recorder.artifact("checks", path)
    if agree.facts.get("table"):
        table = ctx.workdir / "nodes.md"
        write_atomic(table, str(agree.facts["table"]) + "\n")
        ctx.recorder.artifact("nodes", table)
    counts = {status: 0 for status in CheckStatus}
    for check in checks:
        counts[check.status] += 1
        ctx.recorder.metric(f"check.{check.name}", check.status.value)
    for status, n in counts.items():
        ctx.recorder.metric(f"checks_{status.value}", n)
    failed = [c for c in checks if c.status is CheckStatus.FAIL]
    if failed:
        raise failure(ctx.cell.id, failed)
    ctx.check_gates()
