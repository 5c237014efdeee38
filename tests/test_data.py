import gzip
import http.server
import shutil
import threading
from functools import partial

import pytest
import torch

from altnn.config import DataConfig
from altnn.data import (
    RAW_FILES,
    DataError,
    acquire_file,
    acquire_raw_files,
    load_prepared,
    md5_of_file,
    prepare,
    read_split,
    stratified_indices,
)

LABELS = "t10k-labels-idx1-ubyte"


def test_system_copy_verified_into_raw(raw_dir):
    for name, expected in RAW_FILES.items():
        assert md5_of_file(raw_dir / name) == expected


def test_present_file_is_reused(raw_dir, system_dir):
    assert acquire_file(LABELS, raw_dir, (system_dir,), ()) == f"present in {raw_dir}"


def test_idx_decoding_of_real_files(raw_dir):
    train, test = read_split(raw_dir, "train"), read_split(raw_dir, "test")
    assert train.images.shape == (60_000, 28, 28)
    assert train.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10


def truncated_copy(source, target, keep_fraction=0.5):
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep_fraction)])


def test_truncated_system_copy_rejected(system_dir, tmp_path):
    broken_dir, raw = tmp_path / "system", tmp_path / "raw"
    broken_dir.mkdir()
    truncated_copy(system_dir / f"{LABELS}.gz", broken_dir / f"{LABELS}.gz")
    with pytest.raises(DataError) as raised:
        acquire_file(LABELS, raw, (broken_dir,), ())
    message = str(raised.value)
    assert f"{broken_dir / LABELS}.gz" in message
    assert "truncated or corrupt" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not (raw / LABELS).exists()
    assert list(raw.iterdir()) == []  # no temporary file left behind


def test_corrupt_content_with_valid_gzip_rejected(system_dir, tmp_path):
    broken_dir = tmp_path / "system"
    broken_dir.mkdir()
    content = gzip.decompress((system_dir / f"{LABELS}.gz").read_bytes())
    altered = content[:-1] + bytes([(content[-1] + 1) % 10])
    (broken_dir / f"{LABELS}.gz").write_bytes(gzip.compress(altered))
    with pytest.raises(DataError, match="content MD5 is .* expected 15d484375f8d13e6eb1aabb0c3f46965"):
        acquire_file(LABELS, tmp_path / "raw", (broken_dir,), ())


def test_corrupt_raw_file_replaced_from_system_copy(system_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / LABELS).write_bytes(b"\x00\x00\x08\x01 not labels")
    source = acquire_file(LABELS, raw, (system_dir,), ())
    assert source.startswith("system copy")
    assert md5_of_file(raw / LABELS) == RAW_FILES[LABELS]


def test_no_source_lists_what_was_tried(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as raised:
        acquire_file(LABELS, tmp_path / "raw", (empty,), ("http://127.0.0.1:9/",))
    message = str(raised.value)
    assert "Sources tried" in message
    assert str(empty) in message
    assert "http://127.0.0.1:9/" in message


@pytest.fixture()
def local_mirror(system_dir, tmp_path):
    """Serve the gzipped files over HTTP on the loopback, as the official mirrors do."""
    served = tmp_path / "mirror"
    shutil.copytree(system_dir, served)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()


def test_download_from_mirror(local_mirror, tmp_path):
    url, _ = local_mirror
    raw = tmp_path / "raw"
    sources = acquire_raw_files(raw, system_dirs=(), mirrors=(url,))
    assert set(sources.values()) == {f"downloaded from {url}"}
    assert md5_of_file(raw / LABELS) == RAW_FILES[LABELS]


def test_truncated_download_rejected(local_mirror, tmp_path):
    url, served = local_mirror
    truncated_copy(served / f"{LABELS}.gz", served / f"{LABELS}.gz", keep_fraction=0.9)
    with pytest.raises(DataError, match="truncated or corrupt"):
        acquire_file(LABELS, tmp_path / "raw", (), (url,))
    assert not (tmp_path / "raw" / LABELS).exists()


def test_truncated_idx_rejected_by_reader(raw_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte", LABELS):
        shutil.copyfile(raw_dir / name, tmp_path / name)
    truncated_copy(raw_dir / "t10k-images-idx3-ubyte", tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="not a valid IDX file"):
        read_split(tmp_path, "test")


def test_stratified_subset_is_balanced_and_repeatable(raw_dir):
    labels = read_split(raw_dir, "test").labels
    first = stratified_indices(labels, 105, seed=0)
    assert torch.equal(first, stratified_indices(labels, 105, seed=0))
    assert not torch.equal(first, stratified_indices(labels, 105, seed=1))
    assert torch.bincount(labels[first]).tolist() == [11] * 5 + [10] * 5
    assert len(set(first.tolist())) == 105


def test_prepare_writes_subsets_and_normalization(raw_dir, tmp_path):
    config = DataConfig(mean=0.2860, std=0.3530, train_subset=300, test_subset=None)
    summary = prepare(raw_dir, tmp_path, config)
    data = load_prepared(tmp_path)
    assert len(data.train) == 300
    assert len(data.test) == 10_000
    assert summary["train_class_counts"] == [30] * 10
    assert data.mean == pytest.approx(0.2860)
    assert data.train.images.dtype == torch.uint8


def test_missing_prepared_data_names_stage(tmp_path):
    with pytest.raises(DataError, match="dvc repro preprocess"):
        load_prepared(tmp_path)
