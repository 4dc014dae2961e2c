"""Channels-last against PyTorch's default (NCHW) layout: one training epoch per model, in one process.

``training.channels_last`` (default true) trains the convolutions on channels-last tensors.
This times a training epoch (forward, backward, Adam step, then one evaluation pass) of each
family at the sizes ddray's local CNNs have, both layouts alternating, and prints the ratio
channels-last / NCHW (< 1: channels-last is faster). On a GPU node pass ``--device cuda``.

    python benchmarks/bench_memory_layout.py
    python benchmarks/bench_memory_layout.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddray.models.registry import create_model
from ddray.training.local import warm_up

CASES = [
    ("small_cnn", 0.5, (32, 32), 1),
    ("small_cnn", 0.5, (16, 16, 16), 1),
    ("vgg11", 0.25, (32, 32), 3),
    ("mobilenet_v2", 0.5, (32, 32), 3),
    ("resnet18", 0.25, (32, 32), 3),
    ("resnet18", 0.25, (12, 12, 12), 1),
]


def epoch_seconds(name: str, width: float, shape: tuple, channels: int, channels_last: bool, args) -> float:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(name, in_channels=channels, num_classes=10, spatial_dims=len(shape), width=width).to(device)
    x = torch.randn(args.samples, channels, *shape, device=device)
    y = torch.randint(0, 10, (args.samples,), device=device)
    if channels_last:
        layout = torch.channels_last if len(shape) == 2 else torch.channels_last_3d
        model, x = model.to(memory_format=layout), x.contiguous(memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def one_epoch() -> None:
        model.train()
        for i in range(0, args.samples, args.batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[i : i + args.batch_size]), y[i : i + args.batch_size]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            model(x[: args.samples // 3])
        if device.type == "cuda":
            torch.cuda.synchronize()

    one_epoch()  # warm-up: kernel selection, allocator
    started = time.perf_counter()
    one_epoch()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a local CNN's worker uses 1 per CPU)")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating pairs per model; the median ratio is printed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_up()
    print(f"{args.device}, {args.threads} thread(s), {args.samples} samples, batch {args.batch_size}, {args.repeats} pairs")
    print(f"{'model':13s} {'width':>5s} {'input':>12s}  {'NCHW s':>7s} {'CL s':>7s}  CL/NCHW")
    for name, width, shape, channels in CASES:
        pairs = [(epoch_seconds(name, width, shape, channels, False, args), epoch_seconds(name, width, shape, channels, True, args))
                 for _ in range(args.repeats)]
        ratio = statistics.median(b / a for a, b in pairs)
        plain, fast = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
        size = "x".join(map(str, shape)) + f"x{channels}c"
        print(f"{name:13s} {width:5.2f} {size:>12s}  {plain:7.3f} {fast:7.3f}  {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
