"""A unit's commands on another Ray node (harness.workplan.node_site), on a real two-node Ray
cluster on this host (ray.cluster_utils.Cluster, conftest's ray_cluster): the server starts under a keeper on the other
node, binds that node's address, its log is mirrored here, failures carry the node's output,
a path the node lacks is refused naming it, and nothing outlives a harness that is SIGKILLed.

The stand-in server of test_serving_lifecycle.py speaks /health and the chat API in a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from test_serving_lifecycle import STAND_IN

from harness import cluster
from harness import process
from harness.cell import Cell
from harness.cell import ModelFacts
from harness.cluster_layout import Placement
from harness.process import Command
from harness.process import CommandFailed
from harness.serving.server import ServerFailed
from harness.serving.server import ServerSpec
from harness.serving.server import running
from harness.stages.preflight import probe_nodes
from harness.workplan import node_site
from harness.workplan.leases import LeasedNode
from harness.workplan.node_site import NodeSite
from harness.workplan.node_site import own_node_id
from harness.workplan.run import storage_problems

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent.parent


def other_node() -> dict[str, Any]:
    import ray

    own = own_node_id()
    return next(n for n in ray.nodes() if n["Alive"] and n["NodeID"] != own)


@pytest.fixture
def site(ray_cluster: cluster.RayCluster) -> NodeSite:
    node = other_node()
    leased = LeasedNode(node["NodeID"], node["NodeManagerAddress"], (0,))
    return NodeSite(leased, {"VLLM_CPU_OMP_THREADS_BIND": "0", "LEASED_MARK": "unit-7"}, (0,))


def stand_in(tmp_path: Path, mode: str, host: str, port: int) -> ServerSpec:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN.replace('HTTPServer(("127.0.0.1", port)',
                                       'HTTPServer((sys.argv[3], port)'), encoding="utf-8")
    cmd = Command((sys.executable, str(script), mode, str(port), host), {}, "stand-in server")
    return ServerSpec(cmd, host, port, "stand-in", 20.0)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def test_a_server_runs_on_the_leased_node_binds_its_address_and_its_log_comes_here(
    site: NodeSite, tmp_path: Path
) -> None:
    node = other_node()
    spec = stand_in(tmp_path, "ok", site.address, site.free_port())
    log = tmp_path / "server.log"
    with process.placed((0,), site.env, site), running(spec, log) as server:
        assert server.smoke["completion_tokens"] == 3  # answered at the node's address
        proc = server.process
        assert proc is not None
        pid = proc.pid
        # in the keeper's group, started from a Ray worker of the other node's raylet (whose
        # socket is on that raylet's command line)
        assert os.getpgid(pid) == getattr(proc, "pgid", None) != os.getpgid(0)
        env = environ(pid)
        assert node["RayletSocketName"] in cmdline(int(env["RAY_RAYLET_PID"]))
        assert env["LEASED_MARK"] == "unit-7" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
        assert os.sched_getaffinity(pid) == {0}
    assert "INFO starting stand-in ok" in log.read_text()
    assert gone(pid, 15.0)


def test_a_server_that_exits_on_the_node_fails_with_the_nodes_output(
    site: NodeSite, tmp_path: Path
) -> None:
    spec = stand_in(tmp_path, "exit", site.address, site.free_port())
    with (process.placed((), {}, site), pytest.raises(ServerFailed) as failed,
          running(spec, tmp_path / "server.log")):
        pass
    text = str(failed.value)
    assert "exited with status 3" in text and "RuntimeError: something broke" in text


def test_a_command_naming_a_path_the_node_lacks_is_refused_naming_node_and_path(
    site: NodeSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every path exists on both nodes of a one-host cluster: add one the node cannot have
    monkeypatch.setattr(node_site, "paths_named", lambda c: ["/nfs/models/llama-missing"])
    with pytest.raises(CommandFailed, match=rf"on node {site.label}: not found on .*"
                       r"/nfs/models/llama-missing; the run directory and the model paths"):
        site.start(Command(("true",)), tmp_path / "x.log")


def test_a_run_on_the_node_returns_its_output_and_status(site: NodeSite, tmp_path: Path) -> None:
    with process.placed((), {"LEASED_MARK": "u"}, site):
        out = process.run(Command(("sh", "-c", "echo on-node $LEASED_MARK")), tmp_path / "a.log",
                          30.0)
        assert "on-node u" in out
        # a command without a cwd of its own runs in the harness's, which the node sees here
        assert process.run(Command(("pwd",)), tmp_path / "d.log", 30.0).strip() == os.getcwd()
        with pytest.raises(CommandFailed, match="exited with status 4"):
            process.run(Command(("sh", "-c", "echo bad; exit 4")), tmp_path / "b.log", 30.0)
        with pytest.raises(CommandFailed, match=rf"timed out after 1 s on node {site.label}"):
            process.run(Command(("sleep", "30")), tmp_path / "c.log", 1.0)


def test_a_killed_harness_leaves_nothing_running_on_the_node(
    ray_cluster: cluster.RayCluster, tmp_path: Path
) -> None:
    node = other_node()
    driver = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import ray
        ray.init(address={ray_cluster.address!r}, log_to_driver=False)
        from harness.process import Command
        from harness.workplan.leases import LeasedNode
        from harness.workplan.node_site import NodeSite
        site = NodeSite(LeasedNode({node["NodeID"]!r}, {node["NodeManagerAddress"]!r}, ()))
        proc = site.start(Command(("sleep", "600")), Path({str(tmp_path / "s.log")!r}))
        print(proc.pid, flush=True)
        time.sleep(600)
    """)
    harness = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE,
                               text=True, cwd=REPO, start_new_session=True)
    try:
        assert harness.stdout is not None
        pid = int(harness.stdout.readline())
        assert cmdline(pid).startswith("sleep 600")
    finally:
        os.killpg(harness.pid, signal.SIGKILL)
        harness.wait()
    assert gone(pid, 60.0), "the command outlived the harness that started it"


def test_the_storage_check_names_what_a_node_does_not_see(
    ray_cluster: cluster.RayCluster, tmp_path: Path
) -> None:
    node = other_node()
    model = tmp_path / "model"
    model.mkdir()
    assert storage_problems([node], tmp_path / "run", [str(model)]) == {}
    found = storage_problems([node], tmp_path / "run", [str(model), "/nfs/no-such-model"])
    label = f"{node['NodeManagerAddress']}/{node['NodeID'][:8]}"
    assert list(found) == [label]
    assert "does not see /nfs/no-such-model" in found[label] and "same path" in found[label]
    assert not list(tmp_path.glob(".node-check-*"))  # its token is removed


def test_preflight_of_a_unit_on_the_node_probes_that_node(site: NodeSite) -> None:
    cell = Cell(ModelFacts("m"), "cpu")
    with process.placed((), {}, site):
        probe = probe_nodes(cell, Placement("CPU", 1.0, 1), {"env": ["LEASED_MARK"]}, True)
    assert list(probe.facts) == [site.label] and probe.problem is None
    assert probe.facts[site.label]["hostname"]
