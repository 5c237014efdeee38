"""Shared fixtures: the real Fashion-MNIST files and small class-stratified subsets of them."""

from pathlib import Path

import pytest
import torch

from altnn.data import SYSTEM_DIRS, PreparedData, acquire_raw_files, read_split, subset

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def system_dir() -> Path:
    """The system copy of Fashion-MNIST that scripts/setup.sh installs."""
    for folder in SYSTEM_DIRS:
        if (folder / "train-images-idx3-ubyte.gz").exists():
            return folder
    pytest.skip("no system copy of Fashion-MNIST; run scripts/setup.sh as root on Debian")


@pytest.fixture(scope="session")
def raw_dir(system_dir, tmp_path_factory) -> Path:
    """A folder holding the four verified IDX files, decompressed from the system copy."""
    folder = tmp_path_factory.mktemp("raw")
    acquire_raw_files(folder, system_dirs=(system_dir,), mirrors=())
    return folder


@pytest.fixture(scope="session")
def tiny_data(raw_dir) -> PreparedData:
    """512 training and 200 test images of the real data set, stratified by class."""
    train = subset(read_split(raw_dir, "train"), 512, seed=0)
    test = subset(read_split(raw_dir, "test"), 200, seed=0)
    return PreparedData(train=train, test=test, mean=0.5, std=0.5)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep results comparable between runs inside one test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
