import pytest

from tests.farm.raykit import FARM, FAST


@pytest.fixture(scope="package")
def inputs(tmp_path_factory):
    """The Ray farm tests' job: 4 s of demo speech on a tiny picture, 3 windows."""
    from infinitetalk_dist.samples import write_demo_inputs

    d = tmp_path_factory.mktemp("ray-in")
    image, audio = write_demo_inputs(d, seconds=4.0)
    return ["--image", str(image), "--audio", str(audio), *FAST, *FARM]


@pytest.fixture(scope="package")
def reference(inputs, tmp_path_factory):
    """The same job with farm=local: the film every farm run must reproduce byte for byte."""
    from infinitetalk_dist.launch.cli import main

    out = tmp_path_factory.mktemp("ray-ref") / "film.mp4"
    assert main(["run", *inputs, "-o", str(out)]) == 0
    return out.read_bytes()
