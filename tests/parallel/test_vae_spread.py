"""The VAE spread over a replica's ranks (parallel/vae_spread.py) against the whole frame, on
gloo ranks: even and uneven bands, the fallback for frames with fewer latent rows than ranks."""

from __future__ import annotations

import pytest

from infinitetalk_dist.parallel.vae_spread import band_rows
from tests.parallel import workers
from tests.parity.golden import record
from tests.parallel.ranks import run_on_ranks

# (frames, height, width): 6 and 5 latent rows (even and uneven bands), one latent row (fallback).
SHAPES = [(9, 48, 40), (5, 40, 32), (5, 8, 16)]


def test_band_rows():
    assert band_rows(5, 2) == [3, 2] and band_rows(6, 3) == [2, 2, 2] and sum(band_rows(57, 4)) == 57


@pytest.mark.parametrize("world", [2, 3])
def test_spread_equals_whole_frame(world):
    results = run_on_ranks(workers.vae_spread, world, SHAPES, timeout_s=240)
    worst = 0.0
    for rows in results:
        for row in rows:
            t, h, w = row["shape"][2:]
            assert row["z_shape"] == (1, 16, (t - 1) // 4 + 1, h // 8, w // 8) and row["x_shape"] == (1, 3, t, h, w)
            # float32 on the CPU: the same sums in the same order per output value.
            assert row["z_err"] <= 1e-5 * row["z_scale"] and row["x_err"] <= 1e-5 * row["x_scale"], row
            assert row["inert"] == 0.0  # the hooks act only inside a spread call
            worst = max(worst, row["z_err"] / row["z_scale"], row["x_err"] / row["x_scale"])
    record(f"tiny VAE spread over {world} gloo ranks vs the whole frame (encode, decode; {len(SHAPES)} shapes): "
           f"max|diff|/max|whole| = {worst:.2e}")
