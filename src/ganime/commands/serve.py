"""``ganime serve [--host 127.0.0.1] [--port 8000] [--checkpoint CKPT]...``: the web app."""

from __future__ import annotations

import argparse

from ganime.commands import positive


def _port(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {s!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port {v} is out of range 0-65535")
    return v


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the web app (colour sketches with hints in the browser)",
        description="Serve the colouring page and its HTTP API. Binds to 127.0.0.1 (this computer only) "
                    "unless --host says otherwise; see docs/web.md.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 exposes the "
                        "app to every network this computer is on)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--checkpoint", action="append", metavar="CKPT",
                   help="a run's last.pt (or run folder) or an exported .safetensors; repeat to offer several "
                        "models (the first is the default); default: the model shipped with GANime")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("--max-upload-mb", type=positive(float), default=20.0,
                   help="largest upload in megabytes (default 20)")
    p.add_argument("--max-pixels", type=positive(int), default=4096 * 4096,
                   help="largest image in pixels, width x height (default 16777216 = 4096x4096)")
    p.add_argument("--max-active", type=positive(int), default=2,
                   help="requests read, decoded, coloured and sent at once; more wait in a queue (default 2)")
    p.add_argument("--max-queue", type=positive(int, zero=True), default=16,
                   help="requests waiting for a turn before the server answers 503 busy (default 16)")
    from ganime.commands.colorize import add_fast_arg

    add_fast_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import errno

    from ganime.commands.colorize import passive_openmp_threads

    passive_openmp_threads()  # before torch loads

    from ganime.colorize import default_checkpoint
    from ganime.errors import InputError
    from ganime.train import resolve_device
    from ganime.web.server import Limits, make_server, models_from_checkpoints

    device = resolve_device(args.device)
    checkpoints = args.checkpoint or [default_checkpoint()]
    models = models_from_checkpoints(checkpoints, device, fast=args.fast, background=args.background,
                                     max_size=args.max_size, flatten=args.flatten)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    max_active=args.max_active, max_queue=args.max_queue)
    try:
        server = make_server(models, args.host, args.port, limits, device=str(device))
    except OSError as e:
        why = "the port is already in use (pick another with --port)" if e.errno == errno.EADDRINUSE \
            else (e.strerror or str(e))
        raise InputError(f"cannot listen on {args.host}:{args.port}: {why}") from None
    names = ", ".join(f"{n}{' (hints)' if m.hints else ''}" for n, m in models.items())
    print(f"ganime: serving {names} on {device}")
    if not server.loopback_only():
        print(f"ganime: warning: listening on {args.host}: anyone who can reach this computer on port "
              f"{server.server_address[1]} can use the app (no login, no HTTPS)")
    print(f"ganime: open {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("ganime: stopped")
    finally:
        server.server_close()
    return 0
