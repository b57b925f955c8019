"""Device and dtype selection: CUDA first, DirectML when installed, CPU always."""

from __future__ import annotations

import importlib.util
from typing import Any, Sequence

import torch

DIRECTML_INSTALL_HINT = "pip install 'helix[directml]'"

_AUTO_DTYPES = {"cuda": torch.bfloat16, "cpu": torch.float32, "privateuseone": torch.float16}
_NAMED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def directml_available() -> bool:
    return importlib.util.find_spec("torch_directml") is not None


def resolve_device(name: str = "auto") -> torch.device:
    """Map "auto" | "cuda" | "cuda:N" | "cpu" | "directml" to a torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if directml_available():
            return _directml_device()
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} was requested but CUDA is not available")
        return torch.device(name)
    if name == "directml":
        if not directml_available():
            raise RuntimeError(
                f"device='directml' needs the torch-directml package: {DIRECTML_INSTALL_HINT}")
        return _directml_device()
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device: expected auto, cuda, cpu or directml, got {name!r}")


def _directml_device() -> torch.device:
    import torch_directml  # optional dependency, present when directml_available()

    return torch_directml.device()


def to_device(values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values as a tensor on `device`, without waiting for the device: on
    CUDA the copy goes through pinned memory and is queued on the stream (a
    pageable copy would synchronise the stream, stalling queued steps)."""
    tensor = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """Device tensors on their way to host memory: the copies are queued on the
    stream, and `wait` blocks only until they are done, not until every later
    queued kernel is (as `.tolist()` on a CUDA tensor would)."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self._ready: torch.cuda.Event | None = None
        if not tensors or tensors[0].device.type != "cuda":
            self._host = [t.to("cpu") for t in tensors]
            return
        self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for host, tensor in zip(self._host, tensors):
            host.copy_(tensor, non_blocking=True)
        self._ready = torch.cuda.Event()
        self._ready.record()

    def wait(self) -> list[torch.Tensor]:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" means bf16 on CUDA, fp32 on CPU, fp16 on DirectML."""
    if name == "auto":
        return _AUTO_DTYPES.get(device.type, torch.float32)
    try:
        return _NAMED_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: expected auto, {', '.join(_NAMED_DTYPES)}; got {name!r}") from None
