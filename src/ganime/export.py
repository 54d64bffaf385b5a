"""Exports of a trained generator: ONNX (for onnxruntime and other runtimes) and safetensors.

``ganime export onnx --checkpoint CKPT --out model.onnx [--size 512]`` writes the sketch -> colour
generator with BatchNorm folded into the convolutions (see :mod:`ganime.fast`), float32, input
``sketch`` (N x C x H x W in [-1, 1]; N, H and W dynamic, H and W multiples of ``2**depth``) and
output ``color`` (N x 3 x H x W in [-1, 1]). The run configuration and method name are stored in
the model's metadata (``ganime_config``, ``ganime_method``). :class:`OnnxGenerator` runs such a file
with onnxruntime behind the generator's torch call signature.

``ganime export safetensors`` writes fp16 generator weights for inference (what ``colorize`` and the
web app load; half the size of the float32 weights, and free of pickle).

Both take ``--color-blur SIGMA`` and ``--color-flatten SIGMA`` for a generator trained with
``--line-multiply``: the colour layer's smoothing has no weights, so it can be set (or changed) when
exporting. ``--bn-data CACHE`` recomputes the
generator's BatchNorm statistics on training data first (precise BN; for checkpoints that carry only
the running averages).
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from pathlib import Path

import torch

from ganime.errors import InputError


def _load_generator(checkpoint: str | os.PathLike, color_blur: float | None = None,
                    bn_data: str | os.PathLike | None = None, bn_batches: int = 50,
                    color_flatten: float | None = None, progress: bool = False):
    """The checkpoint's generator, config and method; ``color_blur`` and ``color_flatten`` (not None)
    replace the weight-free colour-layer smoothing of a line-multiply generator in both the network and
    the config; ``bn_data`` (a prepared cache) recomputes its BatchNorm statistics there (see
    :func:`recalibrate`; ``progress``: its bar on stderr)."""
    from ganime.colorize import Colorizer

    c = Colorizer.from_checkpoint(checkpoint, "cpu", flatten=color_flatten, color_blur=color_blur, max_size=None,
                                  option_names={"color_flatten": "--color-flatten"})
    if bn_data is not None:
        recalibrate(c.generator, c.cfg, bn_data, bn_batches, progress)
    return c.generator, c.cfg, c.method


def recalibrate(generator: torch.nn.Module, cfg, data: str | os.PathLike, batches: int = 50,
                progress: bool = False) -> int:
    """Precise BatchNorm statistics for a trained ``generator`` from ``batches`` training batches of the
    prepared cache ``data`` (the run's loader: augmentation, sketch re-extraction, zoom-out and hints);
    for checkpoints saved with running averages (older runs, ``--bn-recalibrate 0``). Returns the batch count.
    ``progress``: a bar on stderr (minutes on a CPU: 50 batches of 32 through the paper's generator)."""
    from ganime.data.hints import HintSampler
    from ganime.data.loader import PairLoader
    from ganime.data.pairs import PairCache
    from ganime.methods.pix2pix import generator_input
    from ganime.nn.layers import recalibrate_batchnorm

    if batches < 1:
        raise InputError(f"--bn-batches {batches}: must be at least 1")
    cache = PairCache(data)
    t, hints = cfg.train, cfg.net.hint_channels
    if cache.size != t.size:  # from its index, before the (long) load
        raise InputError(f"{data}: holds {cache.size}px images, the model was trained at {t.size}px")
    pairs = cache.load("train" if "train" in cache.splits else None, progress=progress)
    loader = PairLoader.for_training(pairs, t, torch.device("cpu"), batch_size=min(t.batch_size, len(pairs)),
                                     hint_sampler=HintSampler() if hints else None)
    from ganime.progress import progress_bar

    with torch.random.fork_rng(devices=[]):  # the dropout draws are seeded; the caller's RNG state is left alone
        torch.manual_seed(t.seed)
        bar = progress_bar(itertools.islice(loader.epoch(0), batches), total=min(batches, loader.steps_per_epoch),
                           desc="BatchNorm statistics", unit="batch", disable=not progress, leave=False)
        inputs = (generator_input(b, hints) for _, b in bar)
        return recalibrate_batchnorm(generator, inputs)


def check_size(size: int, cfg) -> int:
    """Refuse a ``--size`` the generator of ``cfg`` cannot take; returns the multiple its sides need (2 ** depth)."""
    problem = cfg.net.size_problem(size)
    if problem:
        raise InputError(f"--size {size}: {problem}")
    return cfg.net.size_multiple


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, size: int | None = None,
                opset: int = 17, color_blur: float | None = None, bn_data: str | os.PathLike | None = None,
                bn_batches: int = 50, color_flatten: float | None = None, progress: bool = False) -> dict:
    """Write the checkpoint's generator as ONNX to ``out``; returns a small report dict."""
    from ganime.fast import fold_batchnorm
    from ganime.imageio import atomic_write_bytes

    try:
        import onnx  # torch.onnx.export needs it; used below to add metadata
    except ModuleNotFoundError:
        raise InputError("ONNX export needs the onnx package: pip install 'ganime[onnx]'") from None
    try:  # the exporter's own bounds (private constants; their values in torch 2.13 as the fallback)
        from torch.onnx import _constants as onnx_constants

        lo, hi = onnx_constants.ONNX_MIN_OPSET, onnx_constants.ONNX_MAX_OPSET
    except (ImportError, AttributeError):
        lo, hi = 7, 23
    if not lo <= opset <= hi:
        raise InputError(f"--opset {opset}: this torch exports ONNX opsets {lo} to {hi} (default 17)")
    gen, cfg, method = _load_generator(checkpoint, color_blur, bn_data, bn_batches, color_flatten, progress)
    size = cfg.train.size if size is None else size
    multiple = check_size(size, cfg)
    folded = fold_batchnorm(gen).float()
    in_ch = 3 + cfg.net.hint_channels
    x = torch.zeros(1, in_ch, size, size)
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded, (x,), buf, dynamo=False, opset_version=opset, input_names=["sketch"], output_names=["color"],
            dynamic_axes={"sketch": {0: "batch", 2: "height", 3: "width"},
                          "color": {0: "batch", 2: "height", 3: "width"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    for k, v in {"ganime_method": method, "ganime_config": json.dumps(cfg.to_dict(), sort_keys=True),
                 "ganime_input_multiple": str(multiple)}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    data = model.SerializeToString()
    atomic_write_bytes(out, data)
    return {"out": str(out), "bytes": len(data), "size": size, "method": method, "input_channels": in_ch}


class OnnxGenerator:
    """Run an exported ONNX generator with onnxruntime: torch tensor in, torch tensor out."""

    def __init__(self, path_or_bytes, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise InputError("running ONNX models needs onnxruntime: pip install 'ganime[onnx]'") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


def export_safetensors(checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: str = "fp16",
                       color_blur: float | None = None, bn_data: str | os.PathLike | None = None,
                       bn_batches: int = 50, color_flatten: float | None = None, progress: bool = False) -> dict:
    """Write the checkpoint's generator weights (fp16 by default) with its config as safetensors."""
    from ganime.checkpoint import export_safetensors as write

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise InputError(f"--dtype {dtype}: choose one of {', '.join(dtypes)}")
    gen, cfg, method = _load_generator(checkpoint, color_blur, bn_data, bn_batches, color_flatten, progress)
    write(out, method=method, config=cfg.to_dict(), generator_state=gen.state_dict(), dtype=dtypes[dtype])
    return {"out": str(out), "bytes": Path(out).stat().st_size, "method": method, "dtype": dtype}
