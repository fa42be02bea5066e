"""Read the structure of a torch-saved file (`torch.save`: `.pt`, `.bin`, `.ckpt`) without torch, and safely.

A torch file is a pickle (inside a zip archive since torch 1.6, or the older "legacy" stream of pickles) whose
tensors point at raw storages kept beside it. This reader runs the pickle with an unpickler that knows only the few
callables torch uses to rebuild tensors and parameters, each replaced by a function that returns the tensor's
shape (`TensorShape`); plain containers, strings and numbers come back as themselves. Any other global the pickle
names is refused (`UnpicklingError`), so no code from the file ever runs, and the storages are never read.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

__all__ = ["MAX_PICKLE_BYTES", "TensorShape", "read_torch_structure"]

MAX_PICKLE_BYTES: Final = 256 * 1024 * 1024  # the pickle of a checkpoint's state dict is a few MB; refuse bombs
_LEGACY_MAGIC: Final = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy (pre-zip) torch file
_LEGACY_PROTOCOL: Final = 1001

# torch dtypes a pickle may name (the `dtype` argument of _rebuild_tensor_v3); they come back as their names.
_DTYPES: Final = frozenset(
    {"float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2", "int64", "int32", "int16"}
    | {"int8", "uint8", "bool", "complex64", "complex128"}
)


@dataclass(frozen=True)
class TensorShape:
    """A tensor as this reader sees it: its shape, and whether it was saved as a `torch.nn.Parameter`."""

    shape: tuple[int, ...]
    parameter: bool = False


@dataclass(frozen=True)
class _Named:
    """A torch global that is only ever an argument (a storage type, a dtype, the Parameter class)."""

    name: str


_PARAMETER_CLASS: Final = _Named("torch.nn.parameter.Parameter")


class _ParameterDictStub:
    """Stands in for `torch.nn.ParameterDict` (a module): keeps the `_parameters` its pickled state holds."""

    _parameters: Any = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict state, slot state)
            state = state[0]
        if isinstance(state, dict):
            self._parameters = state.get("_parameters")


def _shape_of(size: Any) -> tuple[int, ...]:
    if not isinstance(size, tuple | list) or not all(isinstance(n, int) for n in size):
        raise pickle.UnpicklingError(f"a tensor's size must be a tuple of ints, not {size!r}")
    return tuple(size)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *rest: Any) -> TensorShape:
    # _rebuild_tensor(storage, offset, size, stride), _v2(…, requires_grad, hooks[, metadata]),
    # _v3(…, requires_grad, hooks, dtype[, metadata]): only the size matters here.
    return TensorShape(_shape_of(size))


def _rebuild_parameter(data: Any, *rest: Any) -> TensorShape:
    if not isinstance(data, TensorShape):
        raise pickle.UnpicklingError("a parameter must wrap a tensor")
    return TensorShape(data.shape, parameter=True)


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> TensorShape:
    # How torch pickles a tensor of a subclass (or one carrying attributes): rebuild the plain tensor, then retype.
    if not callable(func) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("malformed tensor subclass record")
    tensor = func(*args)
    if not isinstance(tensor, TensorShape):
        raise pickle.UnpicklingError("a tensor subclass record must rebuild a tensor")
    return TensorShape(tensor.shape, parameter=new_type is _PARAMETER_CLASS)


_ALLOWED: Final[dict[tuple[str, str], Callable[..., Any] | type]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,  # a module's pickled state holds sets (protocol 2 names them `__builtin__.set`)
    ("__builtin__", "set"): set,
    ("torch.nn.modules.container", "ParameterDict"): _ParameterDictStub,
}


class _ShapeUnpickler(pickle.Unpickler):
    """Only the globals above; storages (persistent ids) become a marker and are never read."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and (name.endswith("Storage") or name in _DTYPES):
            return _Named(f"torch.{name}")
        if (module, name) == ("torch.nn.parameter", "Parameter"):
            return _PARAMETER_CLASS
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an embedding or model file")

    def persistent_load(self, pid: Any) -> Any:
        return _Named("storage")


class _PlainUnpickler(pickle.Unpickler):
    """No globals at all: the legacy format's header pickles are plain numbers and dicts."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a torch file's header")


def _zip_pickle(archive: zipfile.ZipFile) -> bytes:
    # torch writes `<archive name>/data.pkl` (the folder is named after the file at save time).
    names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise pickle.UnpicklingError("not a torch archive: no single <name>/data.pkl in it")
    info = archive.getinfo(names[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise pickle.UnpicklingError(f"the archive's pickle is {info.file_size} bytes, over {MAX_PICKLE_BYTES}")
    return archive.read(info)


def _legacy(handle: IO[bytes]) -> Any:
    if _PlainUnpickler(handle).load() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a torch file (no zip archive, no legacy magic number)")
    if _PlainUnpickler(handle).load() != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unknown legacy torch protocol")
    _PlainUnpickler(handle).load()  # sys_info: byte order and type sizes, not needed for shapes
    return _ShapeUnpickler(handle).load()


def read_torch_structure(path: Path) -> Any:
    """The object a torch file holds, with every tensor replaced by its `TensorShape`. Raises
    `pickle.UnpicklingError` (not a torch file, or it names a callable outside the allowed few) or OSError."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return _ShapeUnpickler(io.BytesIO(_zip_pickle(archive))).load()
    with path.open("rb") as handle:
        return _legacy(handle)
