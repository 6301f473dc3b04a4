import os

# Tests never touch the network; transformers/hub must stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray in tests: no token auth, no usage report, no memory-monitor kills on a small CI box.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_memory_usage_threshold", "0.98")
# torch.compile on the CI CPU: compile in-process. Inductor's compile-worker subprocess pool
# keeps a reader thread that can crash the interpreter at exit (a SIGSEGV after all tests
# passed, seen once in CI), and parallel compiles do not help on a 2-core box anyway.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


# Without a GPU, Triton kernels run under Triton's interpreter. It is chosen when triton is
# first imported, so it must be set before any test imports it.
if _no_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parameter named gpu
            item.add_marker(skip)
