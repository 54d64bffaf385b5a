"""``ganime benchmark NAME``: measure ours against the reference recipe, in the same run.

Benchmarks are registered in :data:`BENCHMARKS` (name -> (add_args, run)); add one with
:func:`register_benchmark` (e.g. ``table1`` from the metrics code). ``add_args(parser)`` adds its
options; ``run(args)`` returns a flat dict of results, which is printed as ``key: value`` lines, or
with ``--json`` as ONE JSON line, last on stdout. Progress and per-variant lines go to stderr.
"""

from __future__ import annotations

import importlib
from typing import Callable

#: name -> (add_args(parser), run(args) -> dict)
BENCHMARKS: dict[str, tuple[Callable, Callable]] = {}


def register_benchmark(name: str, add_args: Callable, run: Callable) -> None:
    BENCHMARKS[name] = (add_args, run)


def _lazy(module: str) -> Callable:
    """run(args) that imports ``module`` (torch and all) only when the benchmark runs."""

    def run(args):
        return importlib.import_module(module).run(args)

    return run


def _common(p) -> None:
    p.add_argument("--json", action="store_true", help="print the results as one JSON line (last on stdout)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")


def add_train_args(p) -> None:
    """training images/s, end to end"""
    p.description = ("Training images/s end to end (data, augmentation, both optimizer steps) of GANime's "
                     "Pix2Pix step vs the reference recipe (fp32, NCHW, eager, PIL decode + jitter in "
                     "DataLoader workers over 512x1024 PNGs), interleaved.")
    p.add_argument("--preset", default="paper", help="network sizes: paper (default) or small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=256, help="training crop side (256)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per recipe per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per recipe first")
    p.add_argument("--pairs", type=int, default=64, help="synthetic side-by-side PNGs to generate")
    p.add_argument("--png-size", type=int, default=512, help="side of each half of the PNGs (Kaggle: 512)")
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader worker processes")
    p.add_argument("--compile", action="store_true", help="also torch.compile our networks")
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    p.add_argument("--source", help="folder of colour images for the synthetic pairs")
    _common(p)


def add_infer_args(p) -> None:
    """latency of colouring one sketch"""
    p.description = ("Latency of one sketch through the generator: GANime's fast path vs eager float32 "
                     "(same weights, outputs compared), interleaved; also the small preset.")
    p.add_argument("--preset", default="paper")
    p.add_argument("--checkpoint", help="time this model instead of calibrated paper-initialised weights "
                                        "(a hint model gets empty hint channels)")
    p.add_argument("--hints", action="store_true",
                   help="the generator with 4 colour-hint input channels (as the shipped default model)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--reps", type=int, default=5, help="timed calls per variant (median reported)")
    p.add_argument("--precision", default="auto", help="ours: auto (bf16 where native), fp32 or bf16")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow first call)")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the onnxruntime variant")
    p.add_argument("--no-small", dest="small", action="store_false", help="skip timing the small preset")
    _common(p)


def add_data_args(p) -> None:
    """data prepare and training loader throughput"""
    p.description = ("Throughput of 'ganime data prepare' on 512x1024 side-by-side PNGs (all cores), and of "
                     "the training loader (PairLoader) vs a reference DataLoader with per-sample PIL "
                     "decode + jitter in worker processes.")
    p.add_argument("--pairs", type=int, default=64, help="synthetic side-by-side PNGs to generate")
    p.add_argument("--png-size", type=int, default=512, help="side of each half of the PNGs (Kaggle: 512)")
    p.add_argument("--size", type=int, default=256, help="prepared / training side")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4, help="batches per loader per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader worker processes")
    p.add_argument("--prepare-workers", type=int, default=0, help="prepare processes (default: all cores)")
    p.add_argument("--source", help="folder of colour images for the synthetic pairs")
    _common(p)


def add_eval_args(p) -> None:
    """seconds for SSIM + FID + KID over N pairs"""
    p.description = ("Seconds for SSIM + FID + KID over N generated/real pairs (default 3,545: the Kaggle "
                     "validation split) with GANime's metrics vs the usual recipe (per-pair SSIM on the CPU, "
                     "PIL resize, Inception batches of 32, scipy sqrtm, per-subset KID kernels), interleaved; "
                     "the two recipes' numbers must agree.")
    p.add_argument("--n", type=int, default=3545, help="pairs (default 3545)")
    p.add_argument("--size", type=int, default=256, help="image side (256)")
    p.add_argument("--data", help="prepared cache or folder of pairs to take the images from "
                                  "(default: illustrations from --source, degraded to make the 'generated' set)")
    p.add_argument("--source", help="folder of colour images (default: ../shared/data/anime-busts/train)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median reported)")
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    _common(p)


register_benchmark("train", add_train_args, _lazy("ganime.bench.train"))
register_benchmark("infer", add_infer_args, _lazy("ganime.bench.infer"))
register_benchmark("data", add_data_args, _lazy("ganime.bench.data"))
register_benchmark("eval", add_eval_args, _lazy("ganime.bench.eval"))


def _register_table1() -> None:
    from ganime.commands.evaluate import add_table1_args, run_table1  # the paper's Table 1 lives with evaluation

    register_benchmark("table1", add_table1_args, run_table1)


_register_table1()


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="measure speed against the reference recipe (train, infer, data, eval)",
                       description="Measure GANime against the pix2pix/CycleGAN reference recipe in the same run.")
    bsub = p.add_subparsers(dest="benchmark", metavar="NAME")
    bsub.required = True
    for name, (add_args, run) in BENCHMARKS.items():
        q = bsub.add_parser(name, help=(add_args.__doc__ or "").strip().splitlines()[0] if add_args.__doc__ else None)
        add_args(q)
        q.set_defaults(func=_runner(run))


def _runner(run: Callable) -> Callable:
    def func(args) -> int:
        import json

        result = run(args)
        if getattr(args, "json", False):
            print(json.dumps(result, sort_keys=True))
        else:
            for k, v in result.items():
                print(f"{k}: {v}")
        return 0 if result.get("outputs_match", True) else 3

    return func
