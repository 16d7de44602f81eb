"""bridge-ray installed from a built wheel, away from any checkout, as a user on a cluster gets it.

The wheel is built from a copy of this checkout's files (``pip wheel --no-deps``; a build in
place would leave a ``build/`` folder whose stale files later wheels would pick up) and unpacked into a folder of
its own (``pip install --no-deps --target``); its dependencies come from the test venv, which is
what ``--no-deps`` leaves to the user. Commands run from an empty folder with that folder first
on ``PYTHONPATH``, so nothing is read from the checkout (asserted).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", ".gpu", ".gl", "__pycache__", ".pytest_cache"))
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, cwd=root)
    wheel = next((root / "dist").glob("bridge_ray-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)], check=True,
                   capture_output=True)
    return root / "site"


def installed(site: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(site), "BRIDGE_RAY_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_wheel_ships_the_slurm_bootstrap(wheel_site, tmp_path):
    where = installed(wheel_site, tmp_path, "-c", "import bridge_ray; print(bridge_ray.__file__)")
    assert where.stdout.strip().startswith(str(wheel_site)), where.stdout + where.stderr
    out = installed(wheel_site, tmp_path, "-m", "bridge_ray", "up", "--slurm", "--dry-run", "--name", "wheel",
                    "--nodes", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/bin/bash\n# bridge-ray bootstrap:")
    assert "#SBATCH --nodes=2" in out.stdout and "-m bridge_ray.cluster.slurm_node \"$3\"" in out.stdout
    assert str(REPO) not in out.stdout.replace(sys.executable, "")  # nothing from the checkout


def test_the_checkouts_slurm_bootstrap_is_the_packaged_one():
    link = REPO / "slurm_bootstrap" / "bridge_ray.sbatch"
    assert link.is_symlink() and link.resolve() == (REPO / "bridge_ray" / "cluster" / "slurm_bootstrap" /
                                                    "bridge_ray.sbatch").resolve()
