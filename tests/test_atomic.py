"""Atomic local writes: the suffix is kept, nothing partial is published, nothing leaks.

Side by side with Luigi's own LocalTarget, which loses the suffix and leaks on failure.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import luigi
import luigi.format
import pytest

from neuralstyle.atomic import atomic_path, write_bytes_atomic
from tasks.targets import SuffixAtomicLocalTarget


class Boom(Exception):
    """The failure a writer hits halfway."""


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- temporary_path()


def test_temporary_path_keeps_the_suffix_in_the_same_folder(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "out" / "photo.jpg"))
    with target.temporary_path() as tmp:
        tmp = Path(tmp)
        assert tmp.parent == tmp_path / "out"  # created for us, same filesystem as the result
        assert tmp.name.startswith("photo-luigi-tmp-") and tmp.suffix == ".jpg"
        tmp.write_bytes(b"jpeg bytes")
        assert not target.exists()  # nothing visible before the block ends
    assert Path(target.path).read_bytes() == b"jpeg bytes"
    assert siblings(tmp_path / "out") == ["photo.jpg"]


def test_temporary_path_keeps_compound_suffixes(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "model.tar.gz"))
    with target.temporary_path() as tmp:
        assert tmp.endswith(".tar.gz")
        Path(tmp).write_bytes(b"x")
    assert siblings(tmp_path) == ["model.tar.gz"]


def test_temporary_path_removes_the_temporary_on_failure(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "photo.jpg"))
    with pytest.raises(Boom), target.temporary_path() as tmp:
        Path(tmp).write_bytes(b"half a jpeg")
        raise Boom
    assert siblings(tmp_path) == []


def test_a_failed_rewrite_keeps_the_previous_file(tmp_path: Path) -> None:
    final = tmp_path / "photo.jpg"
    final.write_bytes(b"previous")
    with pytest.raises(Boom), SuffixAtomicLocalTarget(str(final)).temporary_path() as tmp:
        Path(tmp).write_bytes(b"new but broken")
        raise Boom
    assert final.read_bytes() == b"previous"
    assert siblings(tmp_path) == ["photo.jpg"]


def test_luigi_temporary_path_loses_the_suffix_and_leaks_on_failure(tmp_path: Path) -> None:
    """Why SuffixAtomicLocalTarget exists (luigi issue #3128)."""
    target = luigi.LocalTarget(str(tmp_path / "photo.jpg"))
    with pytest.raises(Boom), target.temporary_path() as tmp:
        Path(tmp).write_bytes(b"half a jpeg")
        raise Boom
    assert not tmp.endswith(".jpg")  # photo.jpg-luigi-tmp-0123456789: Pillow cannot tell the format
    assert Path(tmp).exists()  # and the partial file is left behind
    assert siblings(tmp_path) == [Path(tmp).name]


def test_a_folder_written_through_temporary_path_is_removed_on_failure(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "tiles"))
    with pytest.raises(Boom), target.temporary_path() as tmp:
        Path(tmp).mkdir()
        Path(tmp, "tile-0.png").write_bytes(b"tile")
        raise Boom  # the writer's own error surfaces, not an IsADirectoryError from the cleanup
    assert siblings(tmp_path) == []


# ---------------------------------------------------------------- open('w')


def test_open_w_writes_through_a_suffixed_temporary(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "sub" / "receipt.json"))
    with target.open("w") as fh:
        fh.write('{"ok": ')
        temporaries = [n for n in siblings(tmp_path / "sub") if "luigi-tmp" in n]
        assert len(temporaries) == 1 and temporaries[0].endswith(".json")
        assert not target.exists()
        fh.write("true}")
    assert Path(target.path).read_text() == '{"ok": true}'
    assert siblings(tmp_path / "sub") == ["receipt.json"]


def test_open_w_exception_in_the_middle_of_a_write_publishes_nothing(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "photo.png"), format=luigi.format.Nop)
    with pytest.raises(Boom), target.open("wb") as fh:
        fh.write(b"\x89PNG" + b"\0" * 100_000)
        raise Boom
    assert siblings(tmp_path) == []  # no final file, no temporary, right away (not at GC time)


def test_open_w_text_mode_exception_publishes_nothing(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "notes.txt"))
    with pytest.raises(Boom), target.open("w") as fh:
        fh.write("half")
        raise Boom
    assert siblings(tmp_path) == []


def test_open_w_close_is_idempotent(tmp_path: Path) -> None:
    target = SuffixAtomicLocalTarget(str(tmp_path / "a.bin"), format=luigi.format.Nop)
    fh = target.open("w")
    fh.write(b"data")
    fh.close()
    fh.close()
    assert Path(target.path).read_bytes() == b"data"
    assert siblings(tmp_path) == ["a.bin"]


def test_luigi_open_w_temporary_has_no_suffix(tmp_path: Path) -> None:
    target = luigi.LocalTarget(str(tmp_path / "photo.jpg"), format=luigi.format.Nop)
    with target.open("w") as fh:
        (tmp,) = [n for n in siblings(tmp_path) if "luigi-tmp" in n]
        fh.write(b"x")
    assert not tmp.endswith(".jpg")


# ---------------------------------------------------------------- neuralstyle.atomic


def test_atomic_path_needs_something_written(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="nothing was written"),
        atomic_path(tmp_path / "a.jpg"),
    ):
        pass
    assert siblings(tmp_path) == []


def test_write_bytes_atomic(tmp_path: Path) -> None:
    assert write_bytes_atomic(tmp_path / "x" / "a.webp", b"RIFF") == tmp_path / "x" / "a.webp"
    assert (tmp_path / "x" / "a.webp").read_bytes() == b"RIFF"
    assert siblings(tmp_path / "x") == ["a.webp"]


# ---------------------------------------------------------------- concurrent writers

CHUNK = 64 * 1024
CHUNKS = 32  # 2 MiB per writer: many interleaved write() calls


def _write_with_open(path: str, letter: bytes, start: threading.Barrier | None = None) -> None:
    target = SuffixAtomicLocalTarget(path, format=luigi.format.Nop)
    if start is not None:
        start.wait()
    with target.open("w") as fh:
        for _ in range(CHUNKS):
            fh.write(letter * CHUNK)


def _write_with_temporary_path(path: str, letter: bytes) -> None:
    with SuffixAtomicLocalTarget(path).temporary_path() as tmp, open(tmp, "wb") as fh:
        for _ in range(CHUNKS):
            fh.write(letter * CHUNK)
            fh.flush()


def _one_writers_content(path: Path, letters: list[bytes]) -> bool:
    data = path.read_bytes()
    return any(data == letter * (CHUNK * CHUNKS) for letter in letters)


def test_concurrent_thread_writers_never_produce_a_mixed_file(tmp_path: Path) -> None:
    letters = [b"A", b"B", b"C", b"D"]
    final = tmp_path / "out.bin"
    for _ in range(5):
        start = threading.Barrier(len(letters))
        threads = [
            threading.Thread(target=_write_with_open, args=(str(final), letter, start))
            for letter in letters
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _one_writers_content(final, letters)
        assert siblings(tmp_path) == ["out.bin"]


def test_concurrent_process_writers_never_produce_a_mixed_file(tmp_path: Path) -> None:
    letters = [b"W", b"X", b"Y", b"Z"]
    final = tmp_path / "out.jpg"
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_write_with_temporary_path, args=(str(final), letter))
        for letter in letters
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert _one_writers_content(final, letters)
    assert siblings(tmp_path) == ["out.jpg"]
