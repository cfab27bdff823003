"""pipeline.data.cache: generated pairs named by what made them, built whole or not at all, by
any number of processes at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import cache
from pipeline.data.h5 import read_split
from pipeline.data.load import digits_to_h5


def write_marker(text: str):
    def write(train: Path, test: Path) -> None:
        train.write_text(f"{text} train")
        test.write_text(f"{text} test")
    return write


def test_a_pair_is_named_by_its_key_and_built_once(tmp_path):
    calls = []

    def write(train: Path, test: Path) -> None:
        calls.append(1)
        write_marker("a")(train, test)

    first = cache.cached_pair(tmp_path, "my data", {"seed": 0}, write)
    assert first == cache.cached_pair(tmp_path, "my data", {"seed": 0}, write) and calls == [1]
    assert first[0].parent.name == f"my-data-{cache.key_hash({'seed': 0})}"
    assert [p.name for p in first] == ["my-data_train.h5", "my-data_test.h5"]
    other = cache.cached_pair(tmp_path, "my data", {"seed": 1}, write)
    assert other[0].parent != first[0].parent and calls == [1, 1]
    assert first[0].read_text() == "a train"


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def write(train: Path, test: Path) -> None:
        train.write_text("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cache.cached_pair(tmp_path, "d", {"seed": 0}, write)
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_folder_in_the_way_is_named(tmp_path):
    folder = tmp_path / f"d-{cache.key_hash({'seed': 0})}"
    folder.mkdir()
    (folder / "d_train.h5").write_text("only one of the two")
    with pytest.raises(OSError, match=f"{folder} is there but holds no complete d pair"):
        cache.cached_pair(tmp_path, "d", {"seed": 0}, write_marker("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # ours removed


def _digits_test_labels(args: tuple[str, int]) -> tuple[str, list[int]]:
    cache_dir, seed = args
    _, test = digits_to_h5(cache_dir, seed=seed, test_fraction=0.2)
    return str(test), read_split(test, "test")[1].tolist()


def test_parallel_builders_of_several_seeds_each_get_their_own_whole_split(tmp_path):
    jobs = [(str(tmp_path), seed) for seed in (0, 1, 0, 1, 0, 1)]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_digits_test_labels, jobs)
    lone = {seed: _digits_test_labels((str(tmp_path / "lone"), seed)) for seed in (0, 1)}
    for (_, seed), (path, labels) in zip(jobs, results, strict=True):
        assert labels == lone[seed][1]  # the same split as a lone build of that seed
        assert Path(path).parent.name == Path(lone[seed][0]).parent.name
    assert not np.array_equal(lone[0][1], lone[1][1])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "lone") == sorted(
        {Path(path).parent.name for path, _ in results})  # two folders, no .tmp left
