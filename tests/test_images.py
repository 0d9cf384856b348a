"""The container images: Dockerfiles lint clean (hadolint), carry our Ray settings, and their one
install script works in a clean virtual environment (no Docker daemon runs here, so the script is
what is tested; the Dockerfiles only copy the sources and run it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.constants import RAY_ENVIRONMENT_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def test_both_flavours_have_a_dockerfile() -> None:
    assert [path.name for path in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfiles_lint_clean_on_a_pinned_ray_image(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text(encoding="utf-8")
    (base,) = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert re.fullmatch(r"rayproject/ray:2\.60\.\d+-py311-(cpu|gpu)", base), base
    flavour = dockerfile.suffix.lstrip(".")
    assert f"install.sh {flavour} ." in text and base.endswith(flavour)
    settings = dict(re.findall(r"(RAY_[A-Z_]+)=(\S+)", text))
    assert settings == RAY_ENVIRONMENT_DEFAULTS


@pytest.mark.slow
def test_the_install_script_installs_the_cpu_flavour_into_a_clean_virtual_environment(tmp_path: Path) -> None:
    """What Dockerfile.cpu runs, in a fresh venv: one ONNX Runtime, torch's CPU build, a working CLI."""
    # Exactly what Dockerfile.cpu copies into the image, so a file the image lacks fails here too
    # (and pip's in-tree build writes into the copy, not into the checkout).
    source = tmp_path / "source"
    for origin, destination in re.findall(
        r"^COPY --chown=\S+ (.+) (\S+)$", (DOCKER / "Dockerfile.cpu").read_text(), re.M
    ):
        for item in origin.split():
            target = source / (destination.rstrip("/") if destination != "./" else item)
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    environment = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "TORCH_INDEX_URL": "",  # offline here: pip's configured index carries torch's CPU wheel
    }
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["bash", str(source / "deploy" / "docker" / "install.sh"), "cpu", str(source)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cascade-gateway installed (cpu)" in result.stdout
    assert "onnxruntime" in result.stdout
    refused = subprocess.run(
        ["bash", str(DOCKER / "install.sh"), "tpu"], env=environment, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2 and "flavour must be cpu or gpu" in refused.stderr
