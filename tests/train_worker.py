"""Training run for the subprocess tests (SIGKILL + resume, torchrun DDP): a tiny SAM2 with fake-quantized layers.

    python tests/train_worker.py --format sa1b --data DIR --out DIR --steps 4 [--resume]
    torchrun --standalone --nproc_per_node=2 tests/train_worker.py ...
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import quantize_some, tiny_model  # noqa: E402

from qsam2_ext.sam2.data import open_dataset  # noqa: E402
from qsam2_ext.train import TrainConfig, train  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--format", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--clip-length", type=int, default=1)
    p.add_argument("--corrections", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    args = p.parse_args()
    model = quantize_some(tiny_model(64, seed=0))
    dataset = open_dataset(args.format, args.data, clip_length=args.clip_length if args.clip_length > 1 else None)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, clip_length=args.clip_length,
                         corrections=args.corrections, checkpoint_every=args.checkpoint_every,
                         num_workers=args.num_workers, lr=args.lr, quantizer_lr=10 * args.lr, max_objects=3,
                         warmup_steps=1)
    train(model, dataset, config, args.out, resume=args.resume, progress=False)


if __name__ == "__main__":
    main()
