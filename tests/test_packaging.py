"""An installed wheel, away from the checkout, renders `--model shapes` offline: presets, motion registry
and Shapes weights travel inside the package."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    # A clean copy of what the build reads: a checkout's stale build/ would hide files the wheel lacks.
    source = tmp / "source"
    for name in ("cdvideo", "configs", "motion_modules"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp / "dist"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("cdvideo-*.whl")
    target = tmp / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    return target


def run_installed(target, cwd, *argv):
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "CDVIDEO_CACHE": str(cwd / "cache")}
    env.pop("CDVIDEO_PRESETS", None)
    env.pop("CDVIDEO_MOTION_MODULES", None)
    return subprocess.run([sys.executable, "-m", "cdvideo", *argv], cwd=cwd, env=env, capture_output=True, text=True)


def test_wheel_carries_every_preset_and_the_motion_registry(installed):
    package = installed / "cdvideo"
    presets = sorted(p.name for p in (package / "presets").glob("*.yaml"))
    assert presets == sorted(p.name for p in (ROOT / "configs" / "models").glob("*.yaml"))
    assert (package / "motion_registry.yaml").read_text() == (ROOT / "motion_modules" / "registry.yaml").read_text()
    assert not (package / "presets").is_symlink()  # files, not a link back into a checkout


def test_installed_package_renders_shapes_offline(installed, tmp_path):
    result = run_installed(installed, tmp_path, "render", "--model", "shapes", "--steps", "2", "--seed", "0",
                           "--prompt", "a red circle moving left on a blue background", "--out", "clip.mp4", "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    sidecar = json.loads((tmp_path / "clip.json").read_text())
    assert sidecar["settings"]["model"] == "shapes" and (tmp_path / "clip.mp4").stat().st_size > 0
    listing = run_installed(installed, tmp_path, "motion", "list")
    assert listing.returncode == 0 and "animatediff-v2" in listing.stdout, listing.stderr[-2000:]
