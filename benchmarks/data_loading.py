"""Data loading share of a ConvNet training epoch: in-memory tensors vs torchvision + PIL.

Run from the repository root after `dvc repro preprocess`:

    python -m benchmarks.data_loading [--batches 100]

It times three things in one process on the same batches:

- (a) building a batch the way the trainer does: index the normalized in-memory tensor,
  then augment;
- (b) a whole ConvNet training step, including (a);
- (c) building a batch with torchvision's dataset, PIL transforms and a DataLoader.

The target is (a) under 5% of (b).
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import transforms
from torchvision.datasets import VisionDataset

from altnn.config import ModelConfig
from altnn.data import load_prepared, normalize
from altnn.models import build_model
from altnn.training import augment

BATCH_SIZE = 64
TARGET_SHARE = 0.05


class PilDataset(VisionDataset):
    """The prepared images served one PIL image at a time, as torchvision's datasets do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(root=None, transform=transforms.Compose([
            transforms.RandomHorizontalFlip(), transforms.RandomCrop(28, padding=2),
            transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = transforms.functional.to_pil_image(self.images[index])
        return self.transform(image), int(self.labels[index])


def time_batches(batches: int, make_batch) -> float:
    started = time.perf_counter()
    for index in range(batches):
        make_batch(index)
    return (time.perf_counter() - started) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"), help="prepared tensors")
    parser.add_argument("--batches", type=int, default=100, help="batches to time per method")
    args = parser.parse_args()

    data = load_prepared(args.data)
    images = normalize(data.train.images, data.mean, data.std)
    labels = data.train.labels
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    background = -data.mean / data.std

    def tensor_batch(index: int):
        chosen = order[index * BATCH_SIZE:(index + 1) * BATCH_SIZE]
        return augment(images[chosen], ("flip", "crop"), background, generator), labels[chosen]

    model = build_model(ModelConfig("convnet", head_activation="relu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def training_step(index: int):
        batch, targets = tensor_batch(index)
        loss = F.cross_entropy(model(batch).logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    loader = iter(torch.utils.data.DataLoader(PilDataset(data.train.images, labels),
                                              batch_size=BATCH_SIZE, shuffle=True))
    training_step(0)  # warm-up
    loading = time_batches(args.batches, tensor_batch)
    step = time_batches(args.batches, training_step)
    pil = time_batches(args.batches, lambda index: next(loader))

    share = loading / step
    print(f"batch of {BATCH_SIZE}, {args.batches} batches, {torch.get_num_threads()} threads")
    print(f"in-memory batch + augmentation: {loading * 1e3:8.2f} ms")
    print(f"whole ConvNet training step:    {step * 1e3:8.2f} ms")
    print(f"torchvision + PIL batch:        {pil * 1e3:8.2f} ms")
    print(f"loading share of a step: {share:.1%} (target < {TARGET_SHARE:.0%}: "
          f"{'met' if share < TARGET_SHARE else 'NOT met'}); "
          f"PIL route / in-memory route: {pil / loading:.0f}x")


if __name__ == "__main__":
    main()
