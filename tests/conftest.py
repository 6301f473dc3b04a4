import os

# Tests never touch the network; transformers/hub must stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter):
    from tests.parity.golden import RECORDS

    if RECORDS:
        terminalreporter.section("achieved errors (parity and precision)")
        for line in RECORDS:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
