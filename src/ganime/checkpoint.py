"""Self-describing checkpoints: weights + config + method + progress + format version.

A training checkpoint is one file written with ``torch.save`` of plain containers and tensors only,
and read back with ``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects
(no code is ever executed on load). Writes are atomic: a temporary file in the same folder is
fsynced and renamed over the target, so a crash or ``kill -9`` at any moment leaves either the old
or the new checkpoint, never a torn one.

Inference-only exports (and the shipped default model) use safetensors: fp16/fp32 generator weights
with the run configuration, method name and the SHA-256 of the tensor bytes in the header metadata
(checked on load; exports made before it have none).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from ganime import __version__
from ganime.errors import CheckpointError
from ganime.imageio import atomic_write, atomic_write_bytes

FORMAT = "ganime-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, *, method: str, config: dict, state: dict, progress: dict) -> None:
    """Atomically write a training checkpoint.

    Args:
        method: registered method name (``pix2pix``, ``cyclegan`` ...).
        config: the run configuration as a plain dict (RunConfig.to_dict()).
        state: ``{"models": {...}, "optimizers": {...}, "extra": {...}}`` of state dicts.
        progress: ``{"epoch": completed epochs, "step": steps into the current epoch, "global_step": n}``.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ganime_version": __version__,
        "method": method,
        "config_json": json.dumps(config, sort_keys=True),
        "progress": dict(progress),
        **_cpu(state),
    }
    atomic_write(path, lambda f: torch.save(payload, f))  # straight to the file: no copies of the weights as bytes


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike, expect_method: str | None = None) -> dict:
    """Read a checkpoint (training ``.pt`` or exported ``.safetensors``) without executing code.

    Returns a dict with ``method``, ``config`` (dict), ``models`` and, for training checkpoints,
    ``optimizers``, ``extra`` and ``progress``. Every failure is one :class:`CheckpointError` sentence.
    """
    path = _checkpoint_file(path)
    if path.suffix == ".safetensors":
        ckpt = _load_safetensors(path)
    else:
        ckpt = _load_torch(path)
    if expect_method is not None and ckpt["method"] != expect_method:
        raise CheckpointError(
            f"{path}: is a {ckpt['method']} checkpoint, but {expect_method} was asked for"
        )
    return ckpt


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """A checkpoint's run configuration (dict) without reading its weights: the safetensors header, or a training
    checkpoint's pickle with its tensors memory-mapped. Not checked beyond that: :func:`load_checkpoint` does it."""
    path = _checkpoint_file(path)
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n > 100_000_000:  # a header this long is not one
                    raise ValueError("header too long")
                config = _safetensors_metadata(n.to_bytes(8, "little") + f.read(n))["config"]
        else:
            config = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["config_json"]
        config = json.loads(config)
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same sentence
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: checkpoint's configuration is not understood")
    return config


def _checkpoint_file(path: str | os.PathLike) -> Path:
    """The file a checkpoint argument names (a run folder: its last.pt), refused in one sentence when there is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        last = path / "last.pt"
        if not last.exists():
            raise CheckpointError(f"{path}: is a folder without last.pt; pass a checkpoint file")
        path = last
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if path.suffix.lower() == ".onnx":  # ganime export onnx writes it for other runtimes; it holds no config
        raise CheckpointError(f"{path}: an ONNX export (for onnxruntime and other runtimes); give the run's last.pt "
                              "or an exported .safetensors (ganime export safetensors) instead")
    return path


def _load_torch(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            looks_like_zip = f.read(4) == b"PK\x03\x04"
        what = "corrupt or truncated" if looks_like_zip else "not a PyTorch checkpoint file"
        raise CheckpointError(f"{path}: not a readable checkpoint ({what})")
    _check_crc(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain containers "
            "(possibly unsafe, or not from GANime)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {msg})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a GANime checkpoint (foreign or raw state dict)")
    _check_format_version(path, obj.get("format_version", 0))
    try:
        obj["config"] = json.loads(obj.pop("config_json"))
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: checkpoint has no readable configuration") from None
    for key in ("method", "models"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint is missing its {key!r} entry")
    # What GANime writes, checked here so that a hand-edited file is one sentence, not an error deep inside
    if not isinstance(obj["method"], str) or not isinstance(obj["config"], dict):
        raise CheckpointError(f"{path}: checkpoint's method or configuration is not understood")
    models = obj["models"]
    if not isinstance(models, dict) or not all(
            isinstance(sd, dict) and all(isinstance(t, torch.Tensor) for t in sd.values()) for sd in models.values()):
        raise CheckpointError(f"{path}: checkpoint's 'models' entry is not a set of weights")
    progress = obj.get("progress", {})
    if not isinstance(progress, dict) or not all(isinstance(v, int) for v in progress.values()):
        raise CheckpointError(f"{path}: checkpoint's 'progress' entry is not understood")
    return obj


def _check_crc(path: Path) -> None:
    """Every member of the checkpoint's zip against its CRC-32: torch.load does not check them, so a damaged
    file (a bad disk, an interrupted copy) loaded with silently altered weights. About half the time of the load."""
    import zlib

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {msg})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt: its part {bad} fails its checksum)")


def _check_format_version(path: Path, version) -> None:
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: checkpoint format version {str(version)[:40]!r} is not understood")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this GANime ({__version__}) "
                              "understands; upgrade ganime")


def export_safetensors(path: str | os.PathLike, *, method: str, config: dict, generator_state: dict,
                       dtype: torch.dtype = torch.float16, extra_meta: dict | None = None) -> None:
    """Write inference weights (the sketch -> colour generator) as safetensors, atomically."""
    from safetensors.torch import save

    tensors = {}
    for k, v in generator_state.items():
        v = v.detach().cpu()
        if v.is_floating_point() and not k.endswith("num_batches_tracked"):
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "ganime_version": __version__,
        "method": method, "config": json.dumps(config, sort_keys=True), "kind": "generator",
    }
    meta.update({k: str(v) for k, v in (extra_meta or {}).items()})
    # safetensors has no checksum of its own: the tensor bytes' SHA-256 goes into the header (the data
    # section does not depend on the header), so a damaged copy is refused instead of loading altered weights
    meta["sha256"] = hashlib.sha256(_data_section(save(tensors, metadata=meta))).hexdigest()
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _data_section(data: bytes) -> memoryview:
    """A safetensors file's tensor bytes: what follows the 8-byte header length and the JSON header (a view,
    not a copy of the weights)."""
    return memoryview(data)[8 + int.from_bytes(data[:8], "little"):]


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        tensors = load(data)
        meta = _safetensors_metadata(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e)[:120]})") from None
    if meta.get("format") != FORMAT or "config" not in meta or "method" not in meta:
        raise CheckpointError(f"{path}: not a GANime model (safetensors without GANime metadata)")
    if "sha256" in meta and hashlib.sha256(_data_section(data)).hexdigest() != meta["sha256"]:  # older exports: none
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt: its weights fail their checksum)")
    try:
        version, config = int(meta.get("format_version", 1)), json.loads(meta["config"])
    except ValueError:
        raise CheckpointError(f"{path}: GANime metadata is corrupt (unreadable configuration or format version)") from None
    _check_format_version(path, version)
    return {
        "format": FORMAT,
        "format_version": version,
        "method": meta["method"],
        "config": config,
        "models": {"G": {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}},
        "meta": meta,
    }


def _safetensors_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__", {}) or {}
