"""One DiT replica over N processes: device mesh (cfg x sp), Ulysses sequence parallelism,
FSDP2 sharding and CFG-parallel, applied to the model from outside.

Imports only torch (and the models): usable on the GPU image. Typical use::

    state = ParallelState.create(cfg=1)             # after init_process_group; sp = world / cfg
    model = load_dit(wan_dir, it_file, state, dtype=torch.bfloat16)  # state=None: one process
    preds = predict_branches(model, [cond, drop_text, uncond], state)
"""

from .cfg import batch_branches, plan_branches, predict_branches
from .fsdp import fully_shard_dit, is_sharded, local_param_bytes
from .load import load_dit, random_sharded_dit
from .parallelize import INDUCTOR_OPTIONS, compile_blocks, fp8_linears, parallelize_dit
from .state import ParallelState, init_distributed
from .ulysses import check_heads

__all__ = [
    "INDUCTOR_OPTIONS",
    "ParallelState",
    "batch_branches",
    "check_heads",
    "compile_blocks",
    "fp8_linears",
    "fully_shard_dit",
    "init_distributed",
    "is_sharded",
    "load_dit",
    "local_param_bytes",
    "parallelize_dit",
    "plan_branches",
    "predict_branches",
    "random_sharded_dit",
]
