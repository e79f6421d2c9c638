"""diff, atomic output, and the command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from inc_sets import PREFIX
from inc_sets import dense_nodes
from inc_sets import ep_nodes
from inc_sets import load_doc
from inc_sets import write_rank

from harness.errors import MeasurementError
from harness.measurements import atomic
from harness.measurements import diff
from harness.measurements import unify
from harness.measurements import writer
from harness.measurements.cli import add_subparser
from harness.measurements.cli import main

# ---------------------------------------------------------------------------------------------
# diff


def test_diff_of_a_set_with_itself_is_identical(make_set) -> None:
    d = make_set(world=2)
    report = diff(d, d)
    assert report.identical and report.ranks == [0, 1] and report.nodes_compared == 24
    assert "identical" in report.render()


def test_diff_finds_the_largest_differences_and_missing_nodes(make_set, tmp_path: Path) -> None:
    a = make_set("a", world=1)
    b = tmp_path / "b"
    nodes = dense_nodes(0)
    nodes["model.layers.0.mlp.down_proj"]["params"]["weight"][1] = [100.0]
    nodes["model.layers.1.self_attn.qkv_proj"]["inputs"] = [[[0.0]]]
    nodes.pop("model.layers.1.mlp.down_proj")
    nodes["extra"] = {"inputs": [[[1.0]]]}
    write_rank(b, 0, 1, nodes, local_rank=-1)
    report = diff(a, b)
    assert not report.identical
    assert report.only_in_a[0] == ["model.layers.1.mlp.down_proj"]
    assert report.only_in_b[0] == ["extra"]
    assert report.values_differing == 2 and report.nodes_differing == 2
    assert report.max_abs is not None and report.max_abs.node == "model.layers.0.mlp.down_proj"
    assert report.max_abs.entry == "params['weight']" and report.max_abs.b == 100.0
    assert report.max_rel is not None and report.max_rel.rel_diff == 1.0
    assert report.header == ["rank 0: LocalRank 0 vs -1"]
    assert json.loads(report.to_json())["identical"] is False


def test_diff_of_shapes_and_ranks(make_set, tmp_path: Path) -> None:
    a = make_set("a", world=2)
    b = tmp_path / "b"
    write_rank(b, 0, 2, dense_nodes(0, channels=4))
    write_rank(b, 1, 2, dense_nodes(1))
    report = diff(a, b)
    assert report.shape_differs[0] == [
        "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.down_proj",
    ]
    report = diff(a / f"{PREFIX}_0_2.json", a / f"{PREFIX}_1_2.json")
    assert report.ranks == [0] and report.values_differing > 0


# ---------------------------------------------------------------------------------------------
# atomic output


def test_a_failure_midway_leaves_no_output(
    make_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_set(world=4)
    calls = []
    real = writer.SetWriter.write_encoded

    def failing(self, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kw)

    monkeypatch.setattr(writer.SetWriter, "write_encoded", failing)
    with pytest.raises(MeasurementError, match="No space left on device"):
        unify(src, tmp_path / "out", ranks=2)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failure_in_place_leaves_the_old_files(make_set, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_set(world=4)
    unify(src, src, ranks=2)
    before = {p.name: p.read_bytes() for p in src.iterdir()}

    def boom(*args, **kw):
        raise RuntimeError("killed")

    monkeypatch.setattr(writer.SetWriter, "write_mod_list", boom)
    with pytest.raises(RuntimeError):
        unify(src, src, ranks=2, world=4)  # would rewrite the _x_2 files
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_a_kill_midway_leaves_the_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.json").write_text("old")
    code = (
        "import os, signal, sys\n"
        "from harness.measurements.atomic import staged_directory\n"
        f"with staged_directory({str(target)!r}) as stage:\n"
        "    (stage / 'old.json').write_text('new')\n"
        "    (stage / 'half.npz').write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], check=False
    )
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in target.iterdir()] == ["old.json"]
    assert (target / "old.json").read_text() == "old"


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "two-renames"])
def test_commit_into_an_existing_directory_keeps_other_entries(
    tmp_path: Path, monkeypatch, swap: bool
) -> None:
    if not swap:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "keep.txt").write_text("k")
    (target / "replace.json").write_text("old")
    (target / "other.json").write_text("other")
    os.symlink("other.json", target / "link")
    with atomic.staged_directory(target) as stage:
        (stage / "replace.json").write_text("new")
    assert (target / "replace.json").read_text() == "new"
    assert (target / "other.json").read_text() == "other"
    assert (target / "sub" / "keep.txt").read_text() == "k"
    assert os.readlink(target / "link") == "other.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with (
        pytest.raises(MeasurementError, match="exists and is not a directory"),
        atomic.staged_directory(tmp_path / "f"),
    ):
        pass


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_unify_expand_check_diff(
    make_set, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_set(world=4, nodes_fn=ep_nodes, scales=True)
    assert (
        main(["unify", "-m", str(src), "-o", str(tmp_path / "u"), "-r", "1", "-u", "-s", "-v"]) == 0
    )
    out = capsys.readouterr().out
    assert (
        "unify: wrote 3 files" in out
        and "expert-parallel rules: 2 local experts per rank -> 8" in out
    )
    assert "time: parse" in out
    assert main(["expand", "-m", str(tmp_path / "u"), "-o", str(tmp_path / "e"), "-w", "4"]) == 0
    assert (
        main(["postprocess", "-m", str(tmp_path / "e"), "-o", str(tmp_path / "p"), "--deepseek"])
        == 0
    )
    capsys.readouterr()
    assert main(["check", str(tmp_path / "e"), "--json", "--world", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["check", str(tmp_path / "e"), "--world", "2"]) == 1
    assert main(["diff", str(tmp_path / "e"), str(tmp_path / "p")]) == 0
    assert main(["diff", str(src), str(tmp_path / "e"), "--json"]) == 1


def test_cli_long_flags_of_the_public_scripts(make_set, tmp_path: Path) -> None:
    src = make_set(world=2)
    argv = [
        "unify",
        "--measurements",
        str(src),
        "--out",
        str(tmp_path / "u"),
        "--rank",
        "1",
        "--use_expert_paral",
        "--skip_unify_scales",
    ]
    assert main(argv) == 0
    assert main(["unify", "-m", str(src), "-o", str(tmp_path / "g"), "--groups", "0,1"]) == 0
    assert (
        main(
            [
                "expand",
                "--measurements",
                str(tmp_path / "u"),
                "--out",
                str(tmp_path / "e"),
                "--target_world_size",
                "2",
            ]
        )
        == 0
    )
    assert load_doc(tmp_path / "e" / f"{PREFIX}_1_2.json")["LocalRank"] == 1


def test_cli_errors_are_one_line(
    make_set, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_set(world=4)
    assert main(["unify", "-m", str(src), "-o", str(tmp_path / "u"), "-r", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "-r 3 does not divide the world size 4" in err
    assert main(["check", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["unify", "-m", str(src), "-o", str(tmp_path / "u")])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["unify", "-m", str(src), "-o", str(tmp_path / "u"), "-r", "1", "-g", "0,1"])


def test_add_subparser_wires_the_measurements_command(make_set, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="harness")
    sub = parser.add_subparsers(dest="command")
    add_subparser(sub)
    src = make_set(world=2)
    args = parser.parse_args(
        ["measurements", "unify", "-m", str(src), "-o", str(tmp_path / "u"), "-r", "1"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(["measurements"])
    assert args.func(args) == 2


def test_python_dash_m_runs_the_tools(make_set, tmp_path: Path) -> None:
    src = make_set(world=2)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.measurements", "check", str(src)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"check {src}: 0 errors")
