"""``python -m scanlens.models.live``: the trainer process the service starts for live training."""

from __future__ import annotations

import argparse
import sys

HELP = (
    "The scanlens live trainer: a warm torch process that the service starts beside itself for live training "
    "(docs/live-training.md). It reads length-prefixed msgpack requests ('train', 'exit') on standard input "
    "and writes 'ready', 'progress', 'done' and 'failed' messages on standard output, nothing else (its own "
    "logs and whatever libraries print go to standard error). Each 'train' job trains a shallow network on "
    "the operator's labelled pixels and exports it as one ONNX file with its model card. Needs the train "
    "extra (torch, onnx, onnxscript). It ends at 'exit' or at the end of its input."
)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scanlens.models.live", description=HELP)
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch (and numpy BLAS) threads per job; default 1: on a 2-core machine the service "
                             "keeps the other core for recognition")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


if __name__ == "__main__":
    args = parse()
    from scanlens.models.live.worker import main

    sys.exit(main(threads=args.threads))
