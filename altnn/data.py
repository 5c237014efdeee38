"""Fashion-MNIST: acquiring the four IDX files, decoding them, and preparing tensors.

Each file comes from the first source that has a verified copy. The sources are the
raw folder itself, then a system copy (Debian's `dataset-fashion-mnist` installs gzipped
files under /usr/share/datasets/fashion-mnist), then the official mirrors through
torchvision's downloader. Every file is verified by the MD5 of its decompressed content, because
recompressed copies differ in their .gz bytes but not in the IDX content.
"""

import gzip
import hashlib
import json
import logging
import pickle
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import FashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import download_url

from altnn.config import DataConfig
from altnn.io import atomic_path, save_torch, write_json

log = logging.getLogger(__name__)

# MD5 of the decompressed IDX files published on the Fashion-MNIST repository.
RAW_FILES = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
MIRRORS = tuple(FashionMNIST.mirrors)
CLASS_NAMES = tuple(FashionMNIST.classes)
NUM_CLASSES = len(CLASS_NAMES)
PIXEL_MAX = 255.0
CHUNK_BYTES = 1 << 20


class DataError(RuntimeError):
    """A data file is missing, corrupt or cannot be obtained. The message names the fix."""


@dataclass(frozen=True)
class Split:
    """One split of the data set: uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PreparedData:
    train: Split
    test: Split
    mean: float
    std: float


def md5_of_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _decompress_verified(source: Path, target: Path, expected_md5: str) -> None:
    """Decompress (if gzipped) `source` into `target`, only if the content's MD5 matches."""
    digest = hashlib.md5()
    with atomic_path(target) as temporary:
        try:
            opener = gzip.open if source.suffix == ".gz" else open
            with opener(source, "rb") as reader, open(temporary, "wb") as writer:
                while chunk := reader.read(CHUNK_BYTES):
                    digest.update(chunk)
                    writer.write(chunk)
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise DataError(f"{source}: cannot decompress ({error}); the file is truncated or "
                            "corrupt. Delete it or fetch a fresh copy.") from error
        if digest.hexdigest() != expected_md5:
            raise DataError(f"{source}: content MD5 is {digest.hexdigest()}, expected {expected_md5}; "
                            "the file is truncated or corrupt. Delete it or fetch a fresh copy.")


def _download(name: str, mirror: str, target: Path) -> None:
    """Download `name`.gz from one mirror and install its verified content as `target`."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as folder:
        download_url(f"{mirror}{name}.gz", folder, filename=f"{name}.gz")
        _decompress_verified(Path(folder) / f"{name}.gz", target, RAW_FILES[name])


def acquire_file(name: str, raw_dir: Path, system_dirs=SYSTEM_DIRS, mirrors=MIRRORS) -> str:
    """Put a verified copy of one IDX file in `raw_dir` and return where it came from."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    target = raw_dir / name
    expected = RAW_FILES[name]
    tried = []
    if target.exists():
        actual = md5_of_file(target)
        if actual == expected:
            return f"present in {raw_dir}"
        log.warning("%s: content MD5 is %s, expected %s; replacing it", target, actual, expected)
        tried.append(f"{target}: present but corrupt (MD5 {actual}, expected {expected})")

    for folder in system_dirs:
        for candidate in (folder / f"{name}.gz", folder / name):
            if not candidate.exists():
                continue
            try:
                _decompress_verified(candidate, target, expected)
                return f"system copy {candidate}"
            except (DataError, OSError) as error:
                log.warning("%s", error)
                tried.append(str(error))
        if not any((folder / f"{name}{suffix}").exists() for suffix in (".gz", "")):
            tried.append(f"{folder}: no {name}(.gz)")

    for mirror in mirrors:
        try:
            _download(name, mirror, target)
            return f"downloaded from {mirror}"
        except (DataError, OSError, RuntimeError) as error:
            log.warning("download of %s from %s failed: %s", name, mirror, error)
            tried.append(f"{mirror}{name}.gz: {error}")

    listing = "\n  - ".join(tried) if tried else "(no sources configured)"
    raise DataError(f"cannot obtain a verified {name}. Sources tried:\n  - {listing}\n"
                    "Install Debian's package (apt-get install dataset-fashion-mnist), or place "
                    f"{name}.gz from the official Fashion-MNIST release in {raw_dir}, then run again.")


def acquire_raw_files(raw_dir: Path, system_dirs=SYSTEM_DIRS, mirrors=MIRRORS) -> dict[str, str]:
    """Make `raw_dir` hold the four verified IDX files; return each file's source."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    return {name: acquire_file(name, raw_dir, system_dirs, mirrors) for name in RAW_FILES}


def _read_idx(path: Path, reader) -> torch.Tensor:
    """Decode one IDX file with torchvision's reader, naming the file in any error."""
    try:
        return reader(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the download stage first (dvc repro download).") from None
    except (AssertionError, RuntimeError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a valid IDX file ({type(error).__name__}: {error}); "
                        "delete it and run the download stage again (dvc repro download).") from error


def read_split(raw_dir: Path, split: str) -> Split:
    """Decode one split's IDX files with torchvision's reader, checking shapes and labels."""
    image_name, label_name = SPLIT_FILES[split]
    images = _read_idx(raw_dir / image_name, read_image_file)
    labels = _read_idx(raw_dir / label_name, read_label_file).long()
    if images.dim() != 3 or images.dtype != torch.uint8 or len(images) != len(labels):
        raise DataError(f"{raw_dir / image_name}: unexpected shape {tuple(images.shape)} "
                        f"for {len(labels)} labels; delete data/raw and download again.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{raw_dir / label_name}: labels outside 0..{NUM_CLASSES - 1}.")
    return Split(images.contiguous(), labels)


def stratified_indices(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Pick `size` indices with classes as equal as possible, the same for a given seed.

    Each class gets size // 10 images, and the first size % 10 classes get one more.
    Within a class the images are a seeded random draw. Indices come back sorted.
    """
    if size > len(labels):
        raise ValueError(f"subset of {size} images requested from a split of {len(labels)}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(NUM_CLASSES):
        members = torch.nonzero(labels == label).flatten()
        wanted = size // NUM_CLASSES + (1 if label < size % NUM_CLASSES else 0)
        if wanted > len(members):
            raise ValueError(f"class {label} has {len(members)} images, {wanted} requested")
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:wanted]])
    return torch.cat(chosen).sort().values


def subset(split: Split, size: int | None, seed: int) -> Split:
    if size is None or size >= len(split):
        return split
    indices = stratified_indices(split.labels, size, seed)
    return Split(split.images[indices].contiguous(), split.labels[indices])


def prepare(raw_dir: Path, out_dir: Path, config: DataConfig) -> dict:
    """Decode the raw files, draw the configured subsets and save tensors under `out_dir`."""
    sizes = {"train": config.train_subset, "test": config.test_subset}
    summary = {"mean": config.mean, "std": config.std, "subset_seed": config.subset_seed}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split_name, size in sizes.items():
        split = subset(read_split(raw_dir, split_name), size, config.subset_seed)
        save_torch({"images": split.images, "labels": split.labels}, out_dir / f"{split_name}.pt")
        summary[f"{split_name}_size"] = len(split)
        summary[f"{split_name}_subset"] = size
        summary[f"{split_name}_class_counts"] = torch.bincount(
            split.labels, minlength=NUM_CLASSES).tolist()
    write_json(out_dir / "meta.json", summary)
    return summary


def load_prepared(prepared_dir: Path) -> PreparedData:
    """Load what `prepare` saved; the error names the missing file and the stage to run."""
    meta_path = prepared_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        splits = {name: torch.load(prepared_dir / f"{name}.pt", weights_only=True)
                  for name in ("train", "test")}
    except FileNotFoundError as error:
        raise DataError(f"{error.filename}: not found; run the preprocess stage first "
                        "(dvc repro preprocess).") from error
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as error:
        raise DataError(f"{prepared_dir}: unreadable prepared data ({error}); "
                        "delete the folder and run `dvc repro preprocess`.") from error
    return PreparedData(
        train=Split(splits["train"]["images"], splits["train"]["labels"]),
        test=Split(splits["test"]["images"], splits["test"]["labels"]),
        mean=float(meta["mean"]), std=float(meta["std"]),
    )


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] then standardised."""
    return ((images.float() / PIXEL_MAX - mean) / std).unsqueeze(1)
