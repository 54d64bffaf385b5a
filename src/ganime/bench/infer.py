"""``ganime benchmark infer``: latency of colouring one sketch, ours vs the eager float32 reference.

Reference recipe (what the pix2pix/CycleGAN reference code does at test time): the same generator,
eval mode, float32, NCHW, eager PyTorch under ``no_grad``. Ours: :func:`ganime.fast.optimize_generator`
(BatchNorm folded, channels-last, bf16 where the hardware has it natively, on the CPU prepacked
oneDNN convolutions with fused activations), which is what ``Colorizer(..., fast="auto")`` and
``ganime colorize``/``serve`` by default use. Other variants are timed beside them (float32 fast
path, the eager channels-last paths without prepacking (``-eager``), onnxruntime, torch.compile when
asked). All variants run on the SAME weights and input; each one's
largest absolute difference from the reference output is printed and checked against its tolerance.

Without ``--checkpoint`` the weights are the paper initialisation with BatchNorm statistics
calibrated on real sketches (a few forward passes in training mode), so activations have the scale
of a trained network and the accuracy check means something.
"""

from __future__ import annotations

import importlib.util
import time

import torch

from ganime.bench.common import PeakMemory, check_counts, log, machine, mb, median, sync
from ganime.errors import GanimeError

#: Largest absolute output difference from the float32 reference allowed per variant (outputs in [-1, 1];
#: one 8-bit grey level is 2/255 = 0.0078).
TOLERANCE = {"fp32": 1e-4, "fp32-eager": 1e-4, "onnx": 1e-4, "bf16": 6e-2, "bf16-eager": 6e-2,
             "bf16+compile": 6e-2, "fp32+compile": 1e-4}
#: Mean absolute difference allowed per variant.
MEAN_TOLERANCE = {"fp32": 1e-5, "fp32-eager": 1e-5, "onnx": 1e-5, "bf16": 8e-3, "bf16-eager": 8e-3,
                  "bf16+compile": 8e-3, "fp32+compile": 1e-5}


def sketch_inputs(size: int, n: int = 1) -> torch.Tensor:
    """``n`` real sketches from ../shared/data/sketches at ``size`` (random noise when unavailable)."""
    from PIL import Image

    from ganime.bench.common import default_source
    from ganime.imageio import list_images, open_image, pil_to_tensor

    src = default_source()
    folder = src.parent.parent / "sketches" if src else None
    files = list_images(folder) if folder and folder.is_dir() else []
    if not files:
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ims = [open_image(files[i % len(files)]).resize((size, size), Image.BICUBIC) for i in range(n)]
    return torch.stack([pil_to_tensor(im) for im in ims])


def with_hints(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` (N x 3 x H x W sketches) plus empty hint channels up to ``channels`` (no hints given)."""
    if channels <= x.shape[1]:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], channels - x.shape[1], *x.shape[2:])], 1)


def calibrated_generator(preset: str, seed: int = 0, hint_channels: int = 0):
    """The preset's generator, paper initialisation, BatchNorm statistics from real sketches."""
    from ganime.config import make_config
    from ganime.methods import get_method
    from ganime.nn.layers import init_weights

    cfg = make_config("pix2pix", preset)
    cfg.net.hint_channels = hint_channels
    torch.manual_seed(seed)
    g = init_weights(get_method("pix2pix").build_generator(cfg))
    bns = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # cumulative average over the calibration batches
    g.train()
    with torch.no_grad():
        x = with_hints(sketch_inputs(256, 4), g.in_channels)
        g(x[:2])
        g(x[2:])
    return g.eval(), cfg


def run(args) -> dict:
    from ganime.export import check_size
    from ganime.fast import resolve_precision
    from ganime.train import resolve_device

    check_counts(args, reps=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if args.checkpoint:
        from ganime.colorize import Colorizer

        c = Colorizer.from_checkpoint(args.checkpoint, "cpu", max_size=None)
        gen, cfg, preset = c.generator, c.cfg, f"checkpoint {args.checkpoint}"
    else:
        gen, cfg = calibrated_generator(args.preset, hint_channels=4 if getattr(args, "hints", False) else 0)
        preset = args.preset + (" + 4 hint channels" if getattr(args, "hints", False) else "")
    check_size(args.size, cfg)
    x = with_hints(sketch_inputs(args.size, 1), gen.in_channels)
    import os

    result = {"benchmark": "infer", "preset": preset, "size": args.size, "batch": 1,
              "precision": precision, **machine(device),
              # On a shared CPU, OpenMP's spin-waiting threads make every op wait for a preempted peer.
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}
    main = _compare(gen, x, device, precision, args, label=str(preset))
    result.update(main)
    if args.small and not args.checkpoint and args.preset != "small":
        sg, _ = calibrated_generator("small")
        small = _compare(sg, x[:, :3], device, precision, args, label="small", memory=False)
        result["small"] = {k: small[k] for k in ("ours_ms", "reference_ms", "ratio", "variants_ms", "max_abs_diff",
                                                 "mean_abs_diff", "outputs_match")}
        result["outputs_match"] = main["outputs_match"] and small["outputs_match"]  # exit 3 for either
    return result


def _compare(gen, x, device, precision, args, label: str, onnx: bool | None = None, memory: bool = True) -> dict:
    from ganime.fast import optimize_generator

    ref = gen.to(device).eval()
    xd = x.to(device)
    variants = {}

    def reference(inp):
        with torch.no_grad():
            return ref(inp)

    variants["reference"] = reference
    variants["fp32"] = optimize_generator(gen, device, "fp32")
    ours = "fp32"
    if device.type == "cpu":  # the eager channels-last path, without prepacked weights
        variants["fp32-eager"] = optimize_generator(gen, device, "fp32", pack=False)
    if precision == "bf16":
        variants["bf16"] = optimize_generator(gen, device, "bf16")
        ours = "bf16"
        if device.type == "cpu":
            variants["bf16-eager"] = optimize_generator(gen, device, "bf16", pack=False)
    use_onnx = args.onnx if onnx is None else onnx
    if use_onnx and device.type == "cpu":
        try:
            variants["onnx"] = _onnx_variant(gen, x.shape[-1])
        except GanimeError as e:  # onnx/onnxruntime missing: say which extra, time the rest
            log(f"benchmark infer: onnx variant skipped: {e}")
        except Exception as e:  # onnx export or onnxruntime failing: say so, time the rest
            log(f"benchmark infer: onnx variant skipped ({type(e).__name__}: {str(e)[:120]})")
    if args.compile:
        name = f"{precision}+compile"
        t0 = time.perf_counter()
        variants[name] = optimize_generator(gen, device, precision, compile=True)
        with torch.no_grad():
            variants[name](xd)
        log(f"benchmark infer [{label}]: torch.compile took {time.perf_counter() - t0:.0f} s (first call)")
        ours = name
    outputs, times = {}, {k: [] for k in variants}
    for name, f in variants.items():  # warm-up, and the outputs to compare
        outputs[name] = f(xd).float().cpu()
    for _ in range(args.reps):  # interleaved: every variant sees the same machine load
        for name, f in variants.items():
            sync(device)
            t0 = time.perf_counter()
            f(xd)
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1000)
    ms = {k: round(median(v), 2) for k, v in times.items()}
    refo = outputs["reference"]
    diff = {k: float((o - refo).abs().max()) for k, o in outputs.items() if k != "reference"}
    mean = {k: float((o - refo).abs().mean()) for k, o in outputs.items() if k != "reference"}
    ok = {k: diff[k] <= TOLERANCE.get(k, 1e-4) and mean[k] <= MEAN_TOLERANCE.get(k, 1e-5) for k in diff}
    for k in variants:
        extra = "" if k == "reference" else f"  max|diff| {diff[k]:.2e}  mean|diff| {mean[k]:.2e}  {'ok' if ok[k] else 'OUT OF TOLERANCE'}"
        log(f"benchmark infer [{label}] {k:>14}: {ms[k]:9.1f} ms  x{ms['reference'] / ms[k]:.2f}{extra}")
    out = {
        "ours_ms": ms[ours], "reference_ms": ms["reference"], "ratio": round(ms["reference"] / ms[ours], 2),
        "ours_variant": ours, "variants_ms": ms, "reps": args.reps,
        "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diff.items()},
        "mean_abs_diff": {k: float(f"{v:.3g}") for k, v in mean.items()},
        "tolerance": {k: TOLERANCE.get(k, 1e-4) for k in diff}, "outputs_match": all(ok.values()),
    }
    if memory:
        peaks = {}
        for name, f in variants.items():
            with PeakMemory(device) as pm:
                f(xd)
            peaks[name] = mb(pm.bytes)
        out["peak_memory_mb"] = peaks
        out["memory_kind"] = "cuda allocator peak" if device.type == "cuda" else "host RSS peak above the pre-call RSS"
    return out


def _onnx_variant(gen, size: int):
    import io
    import warnings

    from ganime.export import OnnxGenerator
    from ganime.fast import fold_batchnorm

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # torch's own error named no way to get them ('Module onnx is not installed!')
        raise GanimeError(f"needs {' and '.join(missing)}: pip install 'ganime[onnx]' (or pass --no-onnx)")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fold_batchnorm(gen).float().cpu(), (torch.zeros(1, gen.in_channels, size, size),), buf,
                          dynamo=False, opset_version=17, input_names=["sketch"], output_names=["color"])
    return OnnxGenerator(buf.getvalue())
