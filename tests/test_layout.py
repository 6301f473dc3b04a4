"""The package's shape: layers import only downward, no file-level import cycle, small modules,
and the top-level scripts parse."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "infinitetalk_dist"
# What each layer may import from the package (besides the shared leaves errors/timeline).
LAYERS = {
    "kernels": set(),
    "models": {"kernels"},
    "parallel": {"kernels", "models"},
    "media": set(),
    "pipeline": {"kernels", "models", "parallel", "media"},
    "farm": {"kernels", "models", "parallel", "media", "pipeline"},
    "launch": {"kernels", "models", "parallel", "media", "pipeline", "farm", "conf"},
}
GPU_IMAGE_LAYERS = ("kernels", "models", "parallel")  # import with torch/einops/safetensors/numpy/transformers only
NOT_ON_GPU_IMAGE = {"av", "hydra", "omegaconf", "ray", "pyloudnorm", "scenedetect", "silero_vad", "fsspec"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(REPO).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every module imported anywhere in the file (also inside functions), resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                parts = parts if path.name == "__init__.py" else parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    return found


def test_no_file_level_import_cycle():
    modules = _modules()
    edges = {m: {t for t in _imports(m, p, modules) if t in modules and t != m and not m.startswith(t + ".")}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t):], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])


def test_layers_import_only_downward():
    modules = _modules()
    bad = []
    for m, p in modules.items():
        parts = m.split(".")
        layer = parts[1] if len(parts) > 1 and (PKG / parts[1]).is_dir() else None
        if layer not in LAYERS:
            continue
        for t in _imports(m, p, modules):
            tp = t.split(".")
            if tp[0] == "infinitetalk_dist" and len(tp) > 1 and (PKG / tp[1]).is_dir() and tp[1] != layer \
                    and tp[1] not in LAYERS[layer]:
                bad.append(f"{m} imports {t}")
            if layer in GPU_IMAGE_LAYERS and tp[0] in NOT_ON_GPU_IMAGE:
                bad.append(f"{m} imports {t} (not on the GPU image)")
    assert not bad, "\n".join(bad)


def test_gpu_image_layers_import_without_the_cpu_only_packages():
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in sorted(NOT_ON_GPU_IMAGE))
    code = (f"import sys; {blocked}; import infinitetalk_dist.kernels, infinitetalk_dist.models.build, "
            "infinitetalk_dist.models.wav2vec2_windows, infinitetalk_dist.parallel")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]


def test_modules_are_small():
    big = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not big, big


SCRIPTS = sorted((REPO / "launch").glob("*.sh")) + sorted((REPO / "launch").glob("*.sbatch"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_parse(script):
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_kuberay_script_renders_the_job(tmp_path):
    """launch/kuberay_apply.sh with DRY_RUN=1: the job's manifests, rendered from its flags."""
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(REPO / "launch" / "kuberay_apply.sh"), "--video", "/data/in/film.mp4", "--audio",
                           "/data/in/dub.wav", "-o", "/data/out/film.mp4", "--weights", "/weights", "farm.replicas=3"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rayjob = (tmp_path / "rayjob-film.yaml").read_text()
    assert "infinitetalk_dist.launch.ray_job run" in rayjob and "++farm.replicas=3" in rayjob
