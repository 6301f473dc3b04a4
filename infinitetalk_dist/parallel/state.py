"""The parallel state of one replica: which ranks run which guidance branch and sequence slice.

A replica is ``cfg x sp`` processes (the whole torch.distributed world of the replica):
``cfg`` guidance branches run side by side, each over an ``sp``-way Ulysses sequence split,
and the DiT weights are FSDP-sharded over all ``cfg * sp`` ranks. Ranks are laid out
cfg-major (rank = cfg_rank * sp + sp_rank), so a sequence-parallel group is contiguous.

The state is a plain object handed to every function that needs it (no module globals);
``ParallelState.single()`` is the one-process state (no process group), so single-process
code runs the same paths with sizes of 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["ParallelState", "init_distributed"]


@dataclass(frozen=True, eq=False)
class ParallelState:
    """Mesh coordinates and groups of this process. Build with :meth:`create` or :meth:`single`."""

    cfg_size: int
    sp_size: int
    rank: int  # in the replica's world
    device: torch.device
    mesh: object | None = None  # DeviceMesh ("cfg", "sp"), None in one process
    replica_mesh: object | None = None  # 1-D DeviceMesh over all ranks ("replica"): FSDP shards over it

    @property
    def world_size(self) -> int:
        return self.cfg_size * self.sp_size

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def sp_group(self):
        """Process group of this rank's sequence-parallel ranks (None in one process)."""
        return None if self.mesh is None else self.mesh.get_group("sp")

    @property
    def cfg_group(self):
        """Process group of the ranks holding the same sequence slice of the other branches."""
        return None if self.mesh is None else self.mesh.get_group("cfg")

    @property
    def replica_group(self):
        """Process group of all the replica's ranks (None in one process)."""
        return None if self.replica_mesh is None else self.replica_mesh.get_group()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def __repr__(self) -> str:
        return (f"ParallelState(rank {self.rank}/{self.world_size}: cfg {self.cfg_rank}/{self.cfg_size}, "
                f"sp {self.sp_rank}/{self.sp_size}, {self.device})")

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> ParallelState:
        """One process, no process group: cfg = sp = 1."""
        return cls(cfg_size=1, sp_size=1, rank=0, device=torch.device(device))

    @classmethod
    def create(cls, *, cfg: int = 1, sp: int | None = None, device: torch.device | str | None = None) -> ParallelState:
        """The state over the whole (initialised) world: ``cfg * sp`` must equal the world size.

        ``sp`` defaults to world // cfg. Without an initialised process group, or with a world
        of 1, this is :meth:`single`. ``device`` defaults to the current CUDA device under NCCL,
        else CPU.
        """
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device())
                      if world > 1 and dist.get_backend() == "nccl" else torch.device("cpu"))
        device = torch.device(device)
        if cfg < 1 or world % cfg:
            raise ValueError(f"cfg size {cfg} must divide the world size {world}")
        sp = world // cfg if sp is None else sp
        if cfg * sp != world:
            raise ValueError(f"cfg {cfg} x sp {sp} = {cfg * sp} ranks, but the world has {world}")
        if world == 1:
            return cls.single(device)
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (cfg, sp), mesh_dim_names=("cfg", "sp"))
        replica = init_device_mesh(device.type, (world,), mesh_dim_names=("replica",))
        rank = dist.get_rank()
        assert mesh.get_local_rank("cfg") == rank // sp and mesh.get_local_rank("sp") == rank % sp, \
            "unexpected device-mesh rank layout"
        return cls(cfg_size=cfg, sp_size=sp, rank=rank, device=device, mesh=mesh, replica_mesh=replica)


def init_distributed(backend: str | None = None, timeout_s: float = 300.0) -> torch.device:
    """``init_process_group`` from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...).

    Picks NCCL and sets the CUDA device to LOCAL_RANK when CUDA is available, else gloo.
    Returns this process's device. A no-op (returning the device) when already initialised.
    """
    import os

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kw)
    return device
