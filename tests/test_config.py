"""The typed config: the schema behind conf/*.yaml, its checks, and the site/job search path."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from infinitetalk_dist.farm.options import FarmOptions
from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.launch.config import Config, K8sOptions, SmokeOptions, compose, to_config
from infinitetalk_dist.pipeline import request as R

REPO = Path(__file__).resolve().parents[1]
SCHEMA = [Config, R.GenerateRequest, R.InputOptions, R.ModelOptions, R.SamplerOptions, R.ParallelOptions,
          R.LoraSpec, FarmOptions, K8sOptions, SmokeOptions]


def _field_docs(cls) -> dict[str, str]:
    """name -> the string literal right under the field in the class body."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = nxt.value.value
    return docs


@pytest.mark.parametrize("cls", SCHEMA, ids=lambda c: c.__name__)
def test_every_schema_field_has_a_docstring(cls):
    own = {f.name for f in dataclasses.fields(cls)} - {f.name for b in cls.__bases__ if dataclasses.is_dataclass(b)
                                                       for f in dataclasses.fields(b)}
    docs = _field_docs(cls)
    assert own and own <= set(docs), f"{cls.__name__}: no docstring for {sorted(own - set(docs))}"
    assert all(docs[name].strip() for name in own)


def test_groups_compose_into_the_typed_config():
    cfg = to_config(compose(["model=14b", "sampler=lightx2v", "farm=ray", "model.weights=/w"]))
    assert isinstance(cfg, Config) and isinstance(cfg.sampler, R.SamplerOptions)
    assert (cfg.model.preset, cfg.sampler.steps, cfg.sampler.text_scale, cfg.farm.backend) == ("14b", 4, 1.0, "ray")
    assert cfg.size_table == "480" and to_config(compose([])).size_table == "tiny"
    # The schema's defaults are the reference's: 40 steps, text 5, audio 4, 81-frame chunks.
    s = to_config(compose([])).sampler
    assert (s.steps, s.text_scale, s.audio_scale, s.frame_num, s.motion_frame) == (40, 5.0, 4.0, 81, 9)


@pytest.mark.parametrize("override, rc, message", [
    ("sampler.steps=many", 2, "sampler.steps"),          # a type error while composing
    ("sampler.stepz=4", 2, "sampler.stepz"),             # no such key
    ("compile=sometimes", 1, "compile must be"),         # a value check of the schema
    ("sampler.frame_num=80", 1, "4n+1"),
    ("dtype=float16", 1, "dtype must be"),
    ("farm.backend=spark", 1, "farm.backend"),
    ("device=tpu", 1, "device must be cpu, cuda or cuda:N"),   # issue 19: values checked before work
    ("device=cuda:x", 1, "device must be"),
    ("sampler.shift=-1", 1, "sampler.shift must be > 0"),
    ("sampler.text_scale=nan", 1, "finite"),
    ("sampler.steps=100000", 1, "sampler.steps must be in [1, 1000]"),
    ("model.loras=[{path: x.safetensors}]", 1, "needs --weights"),
    ("farm.target_s=0.1", 1, "farm.target_s must be within"),
    ("farm.min_s=200", 1, "farm.min_s must be in"),
])
def test_bad_values_are_one_error_line(override, rc, message, capsys, tmp_path):
    assert main(["generate", "-o", str(tmp_path / "x.mp4"), override]) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_site_and_job_files_from_the_search_path(monkeypatch):
    monkeypatch.setenv("INFINITETALK_CONF", str(REPO / "conf"))
    cfg = to_config(compose(["+site=example_cluster", "+job=film_dub", "farm.replicas=16"]))
    assert (cfg.model.preset, cfg.farm.backend, cfg.device, cfg.dtype) == ("14b", "ray", "cuda", "bfloat16")
    assert cfg.sampler.steps == 4 and cfg.model.loras[0].path.endswith(".safetensors")
    assert cfg.input.video == "/shared/in/film.mp4" and cfg.farm.replicas == 16  # the command line wins


def test_cfg_prints_the_composed_config(capsys):
    assert main(["generate", "--cfg", "--steps", "8"]) == 0
    out = capsys.readouterr().out
    assert "steps: 8" in out and "farm:" in out and "backend: local" in out


def test_flags_with_lists_and_dicts_fill_the_typed_fields(tmp_path):
    """--lora (a list of LoraSpec) and --bbox (a dict) go through the schema like key=value."""
    from infinitetalk_dist.launch import cli

    args, overrides = cli._parser().parse_known_args(
        ["generate", "--weights", str(tmp_path), "--lora", "a.safetensors:0.5", "--lora", "b.safetensors", "--bbox",
         *"0 0 10 10 0 10 10 20".split()])
    args.overrides = overrides
    typed = to_config(cli.configure(args))
    assert [(lo.path, lo.strength) for lo in typed.model.loras] == [("a.safetensors", 0.5), ("b.safetensors", 1.0)]
    assert isinstance(typed.model.loras[0], R.LoraSpec) and typed.input.boxes == [[0, 0, 10, 10], [0, 10, 10, 20]]
    assert main(["generate", "--cfg", "--weights", str(tmp_path), "--lora", "a.safetensors:0.5"]) == 0
    # the same boxes as key=value (the form k8s entrypoints replay): was a merge into None
    args, overrides = cli._parser().parse_known_args(
        ["generate", "+input.bbox.person1=[0,0,10,10]", "++input.bbox.person2=[0,10,10,20]"])
    args.overrides = overrides
    assert to_config(cli.configure(args)).input.boxes == [[0, 0, 10, 10], [0, 10, 10, 20]]


def test_quiet_also_hides_the_progress_bar_unless_asked():
    from infinitetalk_dist.launch import cli

    def progress(*argv):
        args, overrides = cli._parser().parse_known_args(["generate", *argv])
        args.overrides = overrides
        return to_config(cli.configure(args)).progress

    assert progress() is True and progress("-q") is False and progress("--no-progress") is False
    assert progress("-q", "progress=true") is True  # the key=value the user wrote wins, not "set twice"


def test_each_command_help_shows_its_own_options(capsys):
    """plan/run --help list farm.*, k8s render --help k8s.* too (from the dataclasses: defaults
    and field docs); --version; -q keeps the log to warnings."""
    import pytest

    from infinitetalk_dist.launch.cli import main

    for argv, want in ((["run"], "farm.replicas=1"), (["plan"], "farm.target_s=null"),
                       (["k8s", "render"], "k8s.namespace=dubbing"), (["k8s", "render"], "farm.gpus_per_replica=1")):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        out = capsys.readouterr().out
        assert want in out and "Replicas the plan balances windows over" in out, argv
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "farm.replicas" not in capsys.readouterr().out  # generate renders one window
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("infinitetalk-dist ")


def test_a_flag_and_the_same_key_value_are_refused_and_an_inverted_box(capsys):
    assert main(["generate", "--steps", "3", "sampler.steps=4", "--cfg"]) == 1
    assert "set twice: sampler.steps" in capsys.readouterr().err
    assert main(["generate", "--bbox", *"0 0 10 10 5 5 1 1".split(), "--cfg"]) == 1
    assert "person2 [5.0, 5.0, 1.0, 1.0]: need 0 <= x0 < x1" in capsys.readouterr().err
