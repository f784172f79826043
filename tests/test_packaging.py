"""What a wheel install gets: the package, the built-in weights, and the CUDA kernels' sources
where ``rtseg.kernels`` looks for them outside a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy of the files git would commit: setuptools writes build/ and *.egg-info
    # into the tree it builds, and a stale build/lib would leak removed modules into the wheel
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: setuptools comes from the test venv (no registry needed)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed: {proc.stderr[-2000:]}")
    (whl,) = out.glob("rtseg-*.whl")
    return whl


def test_wheel_holds_every_kernel_source_and_the_builtin_weights(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    version = wheel.name.split("-")[1]
    data = f"rtseg-{version}.data/data/share/rtseg/cuda/"
    sources = sorted(p.name for p in (ROOT / "cuda").iterdir() if p.suffix in (".cu", ".cuh"))
    assert sources, "no cuda/*.cu in the checkout"
    assert sorted(n[len(data):] for n in names if n.startswith(data)) == sources
    weights = sorted(p.name for p in (ROOT / "rtseg" / "weights").glob("*.pth"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("rtseg/weights/") and n.endswith(".pth")) == weights


def test_installed_wheel_finds_its_kernel_sources_outside_a_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the wheel's dependencies (torch, numpy, ...) from this test's own environment
    Path(site, "test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=240)
    env = {k: v for k, v in os.environ.items() if k not in ("RTSEG_CUDA_DIR", "PYTHONPATH")}
    probe = "import rtseg.kernels as k; print(k.CUDA_DIR); print(k.source_path('fast_nms')); print(k.__file__)"
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cuda_dir, fast_nms, module = proc.stdout.split()
    assert Path(module).is_relative_to(env_dir), "the probe imported the checkout, not the installed wheel"
    assert Path(cuda_dir) == env_dir / "share" / "rtseg" / "cuda"
    assert Path(fast_nms).read_bytes() == (ROOT / "cuda" / "fast_nms.cu").read_bytes()
