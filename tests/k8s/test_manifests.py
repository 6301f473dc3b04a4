"""`infinitetalk-dist k8s render`: the manifests validate offline (kubernetes-validate for the
built-in kinds and every embedded pod template, a repo-kept schema for KubeRay and the
PodMonitor, yamllint), a broken manifest is rejected, the RayJob's entrypoint replays the
rendered config exactly, the dashboard only uses metrics the farm exports, and the
container build file is well formed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.launch.config import compose, to_config
from omegaconf import OmegaConf
from infinitetalk_dist.farm.metrics import METRIC_NAMES

kv = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "k8s" / "schema"
K8S_VERSION = "1.37.0"
JOB = ["--video", "/data/in/film.mp4", "--audio", "/data/in/dub.wav", "-o", "/data/out/film.mp4", "--weights",
       "/weights", "--sampler", "lightx2v", "--prompt", "A woman's voice, calm", "farm=ray", "farm.replicas=4",
       "farm.gpus_per_replica=2", "device=cuda", "dtype=bfloat16"]


def _pod_templates(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "Job":
        return [spec["template"]]
    cluster = spec.get("rayClusterSpec", spec)
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]


def validate(doc: dict) -> list[str]:
    """Every problem found in one manifest (empty: valid)."""
    errors = []
    kind = doc.get("kind")
    if doc.get("apiVersion") == "ray.io/v1":
        schema = json.loads((SCHEMAS / "ray.io_v1.json").read_text())
        errors += [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
    elif kind == "PodMonitor":
        schema = json.loads((SCHEMAS / "monitoring.coreos.com_v1_podmonitor.json").read_text())
        errors += [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
    else:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            errors.append(str(e))
    if kind in ("RayCluster", "RayJob", "Job"):
        try:
            templates = _pod_templates(doc)
        except (KeyError, TypeError) as e:
            return errors + [f"no pod template: {e}"]
        for t in templates:
            try:
                kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": t},
                            K8S_VERSION, strict=True)
            except kv.ValidationError as e:
                errors.append(f"pod template: {e}")
    return errors


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("k8s")
    assert main(["k8s", "render", *JOB, f"k8s.out={out}"]) == 0
    return out


def _docs(folder: Path) -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


def test_rendered_manifests_validate(rendered):
    docs = _docs(rendered)
    assert {d["kind"] for d in docs.values()} == {"RayCluster", "RayJob", "Job", "PodMonitor", "ConfigMap"}
    for name, doc in docs.items():
        assert validate(doc) == [], name
    job = docs["rayjob-film.yaml"]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 4  # farm.replicas, one pod per replica
    gpu = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu == "2"  # farm.gpus_per_replica
    mounts = {m["mountPath"]: m for m in workers["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/weights"]["readOnly"] and "/dev/shm" in mounts
    assert docs["podmonitor.yaml"]["spec"]["podMetricsEndpoints"][0]["port"] == "farm-metrics"


def test_yamllint_passes(rendered):
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig("{extends: default, rules: {line-length: {max: 160}, indentation: {indent-sequences: whatever}}}")
    for p in sorted(rendered.glob("*.yaml")):
        problems = [str(x) for x in linter.run(p.read_text(), conf) if x.level == "error"]
        assert problems == [], p.name


def test_broken_manifest_is_rejected():
    doc = yaml.safe_load((Path(__file__).parent / "bad_rayjob.yaml").read_text())
    errors = validate(doc)
    print("rejected:", *errors, sep="\n  ")
    assert any("'2' is not of type 'integer'" in e for e in errors)  # the repo's KubeRay schema
    assert any(e.startswith("pod template:") and "name" in e for e in errors)  # core/v1 PodTemplate


def test_entrypoint_replays_the_rendered_config(rendered):
    entry = _docs(rendered)["rayjob-film.yaml"]["spec"]["entrypoint"]
    argv = shlex.split(entry)
    assert argv[:5] == ["python", "-m", "infinitetalk_dist.launch.ray_job", "run", argv[4]]
    want = compose(["model=14b", "sampler=lightx2v", "farm=ray", "farm.replicas=4", "farm.gpus_per_replica=2",
                    "device=cuda", "dtype=bfloat16", "input.video=/data/in/film.mp4", "input.audio=/data/in/dub.wav",
                    "output=/data/out/film.mp4", "model.weights=/weights", "input.prompt=\"A woman's voice, calm\"",
                    "farm.metrics_port=9400", "farm.metrics_addr=0.0.0.0"])
    got = compose(["farm=ray", *argv[4:]])

    def job(cfg):  # the typed request with its derived defaults resolved, as the job sees it
        resolved = OmegaConf.structured(to_config(cfg))
        return {k: v for k, v in resolved.items() if k != "k8s"}

    assert job(got) == job(want)


def test_dashboard_uses_only_exported_metrics(rendered):
    import re

    board = json.loads((rendered / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bitd_\w+", e)}
    assert used and used <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    assert set(METRIC_NAMES) - {"itd_window_seconds"} <= used | {"itd_window_seconds"}  # every metric on a panel
    cm = _docs(rendered)["grafana-dashboard.yaml"]
    assert json.loads(cm["data"]["infinitetalk-dist.json"]) == board


def test_one_rayjob_per_title(tmp_path):
    titles = tmp_path / "titles.csv"
    titles.write_text("name,video,audio\nEpisode 1,/data/in/e1.mp4,/data/in/e1.wav\nEpisode 2,/data/in/e2.mp4,/data/in/e2.wav\n")
    out = tmp_path / "k8s"
    assert main(["k8s", "render", *JOB, f"k8s.out={out}", f"k8s.titles={titles}"]) == 0
    docs = _docs(out)
    jobs = {n: d for n, d in docs.items() if d["kind"] == "RayJob"}
    assert sorted(jobs) == ["rayjob-episode-1.yaml", "rayjob-episode-2.yaml"]
    assert "++input.video=/data/in/e2.mp4" in jobs["rayjob-episode-2.yaml"]["spec"]["entrypoint"]
    assert "++output=/data/out/Episode" not in jobs["rayjob-episode-2.yaml"]["spec"]["entrypoint"]
    for name, doc in docs.items():
        assert validate(doc) == [], name


def test_dockerfile_is_well_formed():
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(REPO / "Dockerfile"))
    cmds = [i["instruction"] for i in df.structure if i["instruction"] != "COMMENT"]
    assert set(cmds) <= {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    base = df.baseimage
    assert base.startswith("nvidia/cuda:") and ":" in base and not base.endswith(":latest")
    assert cmds.index("USER") > max(i for i, c in enumerate(cmds) if c == "RUN")  # the last RUN is not root's...
    user = [i["value"] for i in df.structure if i["instruction"] == "USER"][-1]
    assert not user.startswith(("root", "0"))  # ...and the image runs as a non-root user
    for i in df.structure:
        if i["instruction"] == "COPY":
            *sources, _dest = i["value"].split()
            for s in sources:
                assert (REPO / s).exists(), f"COPY {s}: not in the repository"
                assert "weight" not in s.lower() and not s.endswith((".safetensors", ".pth"))


def test_checked_in_examples_are_what_render_writes(tmp_path):
    """k8s/examples is generated (k8s/README.md has the command): re-render and compare."""
    examples = REPO / "k8s" / "examples"
    assert main(["k8s", "render", "--video", "/data/in/film.mp4", "--audio", "/data/in/dub.wav", "-o",
                 "/data/out/film.mp4", "--weights", "/weights", "--sampler", "lightx2v", "farm=ray",
                 "farm.replicas=4", "farm.gpus_per_replica=2", "device=cuda", "dtype=bfloat16",
                 f"k8s.out={tmp_path}"]) == 0
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir()}
    kept = {p.name: p.read_text() for p in examples.iterdir()}
    assert fresh == kept, "k8s/examples is stale: re-run the command in k8s/README.md"


def test_readme_sizing_table_is_what_the_script_prints():
    import subprocess
    import sys

    table = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sizing.py")], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert table in (REPO / "README.md").read_text(), "README sizing table is stale: paste benchmarks/sizing.py's output"


def test_user_strings_are_literal_data(tmp_path, monkeypatch, capsys):
    """A prompt holding ${oc.env:...}, quotes and backslashes: never interpolated (the renderer's
    secret stays out of the manifests and their names), and the pod's entrypoint composes back to
    the same text; a titles CSV field likewise; --cfg and the local config agree."""
    monkeypatch.setenv("ITD_SECRET", "hunter2")
    prompt = r"It's a\d ${oc.env:ITD_SECRET} ${nokey} \${x} end\ "
    out = tmp_path / "m"
    titles = tmp_path / "titles.csv"
    titles.write_text("name,audio,video\nep-${oc.env:ITD_SECRET},/data/in/ep1.wav,/data/in/ep1.mp4\n")
    lora = "/weights/it's ${oc.env:ITD_SECRET}, [x].safetensors"  # inside a list of dicts: the same rules
    assert main(["k8s", "render", *JOB, "--prompt", prompt, "--lora", f"{lora}:0.8", "--bbox",
                 *"0 0 10 10 0 10 10 20".split(), f"k8s.out={out}"]) == 0
    assert main(["k8s", "render", *JOB, "--prompt", prompt, f"k8s.titles={titles}",
                 f"k8s.out={tmp_path / 't'}"]) == 0
    for folder in (out, tmp_path / "t"):
        for p in folder.iterdir():
            assert "hunter2" not in p.name and "hunter2" not in p.read_text(), p
    entry = _docs(out)["rayjob-film.yaml"]["spec"]["entrypoint"]
    replayed = to_config(compose(["farm=ray", *shlex.split(entry)[4:]]))
    assert replayed.input.prompt == prompt
    assert [(x.path, x.strength) for x in replayed.model.loras] == [(lora, 0.8)]
    assert replayed.input.boxes == [[0, 0, 10, 10], [0, 10, 10, 20]]  # a dict the schema defaults to empty
    assert main(["generate", "--prompt", prompt, "--cfg"]) == 0
    assert "hunter2" not in capsys.readouterr().out


@pytest.mark.parametrize("csv_text, message", [
    ("name,video,audio\nEp 1,/in/1.mp4,/in/1.wav\nep-1,/in/2.mp4,/in/2.wav\n", "is also line 2's"),
    ("name,video,audio\nEp 1,/in/1.mp4,\n", "needs its own audio"),
    ("name,video,audio\n", "a header and no title rows"),
    ("name,audio\nEp,/in/1.wav\n", "the header needs name, audio and video or image"),
    ("name,video,audio,output\nEp,/in/1.mp4,/in/1.wav,/data/out/../../etc/x.mp4\n", "without '..'"),
    ("name,video,audio,output\nEp,/in/1.mp4,/in/1.wav,relative.mp4\n", "must be an absolute"),
])
def test_titles_csv_rows_are_checked(tmp_path, capsys, csv_text, message):
    titles = tmp_path / "titles.csv"
    titles.write_text(csv_text)
    assert main(["k8s", "render", *JOB, f"k8s.out={tmp_path / 'k8s'}", f"k8s.titles={titles}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "k8s").exists()  # nothing written


def test_a_title_name_cannot_leave_the_output_volume(tmp_path):
    titles = tmp_path / "titles.csv"
    titles.write_text("name,video,audio\n../../etc/passwd,/in/1.mp4,/in/1.wav\n")
    assert main(["k8s", "render", *JOB, f"k8s.out={tmp_path / 'k8s'}", f"k8s.titles={titles}"]) == 0
    [entry] = [d["spec"]["entrypoint"] for d in _docs(tmp_path / "k8s").values() if d["kind"] == "RayJob"]
    assert "++output=/data/out/etc-passwd.mp4" in entry
