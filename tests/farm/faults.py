"""Fault injection for the Ray farm tests, run inside Ray workers through
``runtime_env={"worker_process_setup_hook": ...}`` (nothing of this is in the product code)."""

import os


def fail_window():
    """Every render of window ``ITD_TEST_FAIL_WINDOW`` raises, on every rank and retry."""
    from infinitetalk_dist.farm import replica

    bad = int(os.environ["ITD_TEST_FAIL_WINDOW"])
    real = replica.ReplicaWorker.render

    def render(self, window, *args):
        if window["index"] == bad:
            raise RuntimeError(f"injected failure rendering window {bad}")
        return real(self, window, *args)

    replica.ReplicaWorker.render = render
