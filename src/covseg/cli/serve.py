"""``covseg serve``: the local web viewer."""

from __future__ import annotations

import argparse

from covseg.cli.common import Runner, bounded_float, bounded_int
from covseg.config import DEVICES
from covseg.errors import CovsegError


# --------------------------------------------------------------------------- serve
def add_serve(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("serve", help="local web viewer: upload scans, see masks and reports")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine)")
    p.add_argument(
        "--port", type=bounded_int(0, 65535), default=8765, help="port (8765; 0 = any free port)"
    )
    p.add_argument("--checkpoint", default="pretrained", help="CKPT.safetensors or 'pretrained'")
    p.add_argument("--data-dir", help="keep uploads and results here (default: a temporary folder)")
    p.add_argument(
        "--max-upload-mb", type=bounded_int(1), default=2048, help="largest upload (2048 MiB)"
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument(
        "--job-timeout",
        type=bounded_float(1),
        default=600.0,
        help="seconds a case may run before it is stopped and marked failed (600)",
    )
    p.add_argument(
        "--no-probabilities",
        dest="probabilities",
        action="store_false",
        help="do not write each case's infection probability (the page then has no threshold "
        "slider)",
    )
    return _run_serve


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from covseg.serve import ServeConfig, serve
    except ImportError as err:
        raise CovsegError(
            f"serve needs its web packages ({err}): pip install 'covseg[serve]'"
        ) from None
    serve(
        ServeConfig(
            host=args.host,
            port=args.port,
            checkpoint=args.checkpoint,
            data_dir=args.data_dir,
            max_upload_bytes=args.max_upload_mb << 20,
            device=args.device,
            job_timeout=args.job_timeout,
            probabilities=args.probabilities,
        )
    )
    return 0
