"""``ganime export onnx | safetensors``: inference exports of a trained generator."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained generator (ONNX, fp16 safetensors)")
    esub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    esub.required = True

    o = esub.add_parser("onnx", help="ONNX with BatchNorm folded in, for onnxruntime",
                        description="Write the sketch -> colour generator as ONNX (float32, BatchNorm folded, "
                                    "dynamic batch/height/width). Needs: pip install 'ganime[onnx]'.")
    o.add_argument("--checkpoint", required=True, help="a run's last.pt (or the run folder) or a .safetensors")
    o.add_argument("--out", required=True, help="output .onnx file")
    o.add_argument("--size", type=int, help="side of the example input used for tracing (default: training size)")
    o.add_argument("--opset", type=int, default=17)
    o.add_argument("--overwrite", action="store_true")
    _add_generator_options(o)
    o.set_defaults(func=run_onnx)

    s = esub.add_parser("safetensors", help="fp16 generator weights for colorize and the web app",
                        description="Write the generator's weights (fp16 by default) with the run configuration.")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True, help="output .safetensors file")
    s.add_argument("--dtype", default="fp16", help="fp16 (default), bf16 or fp32")
    s.add_argument("--overwrite", action="store_true")
    _add_generator_options(s)
    s.set_defaults(func=run_safetensors)


def _add_generator_options(p) -> None:
    """Options of both exports that change the exported generator itself."""
    p.add_argument("--color-blur", type=float, metavar="SIGMA",
                   help="set the exported line-multiply generator's colour-layer blur (pixels; 0: off)")
    p.add_argument("--color-flatten", type=float, metavar="SIGMA",
                   help="set its edge-aware smoothing of the colour layer between the sketch's lines (pixels; 0: off)")
    p.add_argument("--bn-data", metavar="CACHE",
                   help="recompute the generator's BatchNorm statistics on this prepared training cache first")
    p.add_argument("--bn-batches", type=int, help="batches for --bn-data (default 50)")
    p.add_argument("--no-progress", action="store_true", help="hide the --bn-data progress bar")


def _generator_options(args) -> dict:
    """The export functions' keyword arguments of :func:`_add_generator_options`, checked."""
    from ganime.errors import InputError

    if args.bn_batches is not None and args.bn_data is None:
        raise InputError(f"--bn-batches {args.bn_batches}: applies only with --bn-data CACHE")
    return dict(color_blur=args.color_blur, color_flatten=args.color_flatten, bn_data=args.bn_data,
                bn_batches=50 if args.bn_batches is None else args.bn_batches, progress=not args.no_progress)


def _check_out(path: str, suffix: str, overwrite: bool) -> None:
    from pathlib import Path

    from ganime.errors import InputError

    p = Path(path)
    if p.suffix != suffix:
        raise InputError(f"--out {p}: expected a {suffix} file name")
    if p.is_dir():
        raise InputError(f"--out {p}: is a folder; name the {suffix} file to write")
    if p.exists() and not overwrite:
        raise InputError(f"{p}: already exists; pass --overwrite to replace it")


def run_onnx(args) -> int:
    from ganime.export import export_onnx

    _check_out(args.out, ".onnx", args.overwrite)
    r = export_onnx(args.checkpoint, args.out, size=args.size, opset=args.opset, **_generator_options(args))
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.1f} MB, {r['method']} generator, traced at {r['size']}px)")
    return 0


def run_safetensors(args) -> int:
    from ganime.export import export_safetensors

    _check_out(args.out, ".safetensors", args.overwrite)
    r = export_safetensors(args.checkpoint, args.out, dtype=args.dtype, **_generator_options(args))
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.1f} MB, {r['dtype']} {r['method']} generator)")
    return 0
