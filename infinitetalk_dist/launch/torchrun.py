"""One window on one replica of N processes: ``torchrun --nproc_per_node N -m infinitetalk_dist.launch.torchrun generate ...``.

Same flags and config as ``infinitetalk-dist generate``; ``parallel.cfg`` ranks split the
guidance branches, the rest is Ulysses sequence parallelism (sp = N / cfg), and the DiT is
FSDP2-sharded over all N ranks (``parallel.fsdp``). Every rank runs the whole window on the
same inputs (the encoders are small and replicated); only rank 0 writes the MP4. A failure
on any rank is logged with its rank and ends the job with a non-zero exit.
"""

from __future__ import annotations

import logging
import sys
import traceback

import dataclasses

import torch.distributed as dist

from infinitetalk_dist.parallel import ParallelState, init_distributed
from infinitetalk_dist.pipeline.runtime import replica_runtime

from . import cli
from .config import Config

log = logging.getLogger("infinitetalk_dist.launch")


def generate(config: Config) -> None:
    from infinitetalk_dist.pipeline.conform.run import generate_or_conform as run

    device = init_distributed()
    rank = dist.get_rank()
    try:
        if device.type == "cuda":  # this rank's device: cuda:LOCAL_RANK under NCCL
            config = dataclasses.replace(config, device=str(device))
        state = ParallelState.create(cfg=config.parallel.cfg, device=device)
        log.info("rank %d: %s", rank, state)
        info = run(config, replica_runtime(config, state))
        if info is not None:
            print(f"wrote {info.path} ({info.frames} frames, {info.duration:.2f} s) on {state.world_size} ranks "
                  f"(cfg {state.cfg_size} x sp {state.sp_size})")
        dist.barrier()
    except BaseException:
        # Every rank reports its own failure (a peer's "connection reset" is often the first seen).
        print(f"[rank {rank}] failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "generate":
        print("usage: torchrun --nproc_per_node N -m infinitetalk_dist.launch.torchrun generate [flags] "
              "[key=value ...]", file=sys.stderr)
        return 2
    return cli.main(argv, commands={"generate": generate})


if __name__ == "__main__":
    sys.exit(main())
