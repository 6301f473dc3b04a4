"""Load official checkpoints into our models: one entry per file layout users download.

Every loader builds its model on the meta device, checks the checkpoint's keys and shapes
against it *before* reading any tensor data, then materialises each tensor once (read,
convert dtype, move to device, assign), so RAM never holds a second full copy. Problems
come back as one :class:`CheckpointError` that names the file and the first offending keys.
``.pth``/``.bin`` files are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from infinitetalk_dist.errors import InfiniteTalkError

PathLike = str | Path
_SHOW = 5  # how many keys an error lists


class CheckpointError(InfiniteTalkError, ValueError):
    """A checkpoint that cannot be loaded as given (missing, corrupt, wrong keys or shapes)."""


def _first(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


# --------------------------------------------------------------------------- file access


class TensorSource:
    """Lazy view of one checkpoint file: key -> shape without reading data, then tensors."""

    def __init__(self, path: PathLike, key_map: Callable[[str], str | None] | None = None):
        """``key_map`` turns a file key into ours, or None for keys we deliberately skip."""
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: file not found")
        self._pth: dict[str, torch.Tensor] | None = None
        if self.path.suffix == ".safetensors":
            try:
                with safe_open(str(self.path), framework="pt") as f:
                    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(
                    f"{self.path}: not a readable safetensors file (truncated or corrupt?): {e}"
                ) from None
        else:
            self._pth = _torch_load(self.path)
            shapes = {k: tuple(v.shape) for k, v in self._pth.items()}
        key_map = key_map or (lambda k: k)
        self._names = {}  # our key -> key in the file
        for file_key in shapes:
            ours = key_map(file_key)
            if ours is not None:
                self._names[ours] = file_key
        self.shapes = {ours: shapes[f] for ours, f in self._names.items()}

    def keys(self) -> list[str]:
        return list(self.shapes)

    def tensors(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        if self._pth is not None:
            for k in keys:
                yield k, self._pth[self._names[k]]
            return
        try:
            with safe_open(str(self.path), framework="pt") as f:
                for k in keys:
                    yield k, f.get_tensor(self._names[k])
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self.path}: failed reading tensor data (truncated?): {e}") from None


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` restricted to tensors (never arbitrary pickles), memory-mapped."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors "
            f"(only weights_only=True loading is allowed): {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Whole state dict of one ``.safetensors``/``.pth``/``.bin`` file (for small files: LoRA)."""
    src = TensorSource(path)
    return dict(src.tensors(src.keys()))


# --------------------------------------------------------------------------- materialise


@contextmanager
def _meta_init():
    with torch.device("meta"):
        yield


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


def check_keys(expected: Mapping[str, tuple], sources: list[TensorSource], what: str) -> dict[str, TensorSource]:
    """Which source provides each key (later sources win); raises on any mismatch."""
    owner: dict[str, TensorSource] = {}
    for src in sources:
        extra = [k for k in src.keys() if k not in expected]
        if extra:
            raise CheckpointError(f"{src.path}: {len(extra)} unexpected key(s) for {what}: {_first(extra)}")
        bad = [k for k in src.keys() if src.shapes[k] != tuple(expected[k])]
        if bad:
            k = sorted(bad)[0]
            raise CheckpointError(
                f"{src.path}: {len(bad)} key(s) with the wrong shape for {what}, first {k}: "
                f"file {list(src.shapes[k])} vs model {list(expected[k])}"
            )
        owner.update(dict.fromkeys(src.keys(), src))
    missing = [k for k in expected if k not in owner]
    if missing:
        files = ", ".join(str(s.path) for s in sources)
        raise CheckpointError(f"{len(missing)} key(s) of {what} missing from {files}: {_first(missing)}")
    return owner


def materialise(
    model: torch.nn.Module,
    sources: list[TensorSource],
    what: str,
    dtype: torch.dtype | None,
    device: torch.device | str,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Fill a meta-built model from checked sources, one tensor at a time.

    ``transform(key, tensor)`` may change a tensor before its dtype cast (LoRA merging).
    """
    owner = check_keys(expected_shapes(model), sources, what)
    for src in sources:
        keys = [k for k, s in owner.items() if s is src]
        for key, tensor in src.tensors(keys):
            if transform is not None:
                tensor = transform(key, tensor)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            _assign(model, key, tensor.to(device))
    return model.eval().requires_grad_(False)


def _assign(model: torch.nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Replace a (meta) parameter or buffer by ``tensor`` without copying it again."""
    mod_name, _, attr = key.rpartition(".")
    mod = model.get_submodule(mod_name)
    if attr in mod._parameters:
        mod._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[attr] = tensor
