"""tests/scratch_dirs.py: where the tests' servers keep their data, and the reaper of leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import scratch_dirs


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


def test_a_scratch_directory_names_its_maker_and_is_private() -> None:
    made = scratch_dirs.scratch_tempdir("dl-unit-")
    try:
        assert made.name.startswith(f"dl-unit-p{os.getpid()}-")
        assert made.stat().st_mode & 0o777 == 0o700
    finally:
        made.rmdir()


def test_the_ramdisk_is_used_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATALAYER_TEST_RAMDISK", "0")
    assert scratch_dirs._ramdisk() is None
    made = scratch_dirs.scratch_tempdir("dl-unit-")
    made.rmdir()
    assert made.parent != scratch_dirs.RAMDISK
    monkeypatch.setattr(scratch_dirs, "RAMDISK", Path("/nonexistent-ramdisk"))
    monkeypatch.delenv("DATALAYER_TEST_RAMDISK")
    assert scratch_dirs._ramdisk() is None  # missing: the system's temporary directory


def test_a_prefix_the_reaper_would_not_recognise_is_refused() -> None:
    with pytest.raises(ValueError, match="start it with 'dl-'"):
        scratch_dirs.scratch_tempdir("mine-")


def test_the_reaper_removes_directories_of_dead_sessions_and_kills_only_their_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scratch_dirs, "RAMDISK", tmp_path)
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f"dl-citus-5000-p{dead}-abcd1234"
    (stale / "node5000").mkdir(parents=True)
    # a "server" of the stale directory, and a process that merely has a pid written there
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    server = subprocess.Popen([*sleeper, str(stale)])
    bystander = subprocess.Popen(sleeper)
    (stale / "node5000" / "postmaster.pid").write_text(f"{server.pid}\n{stale}/node5000\n")
    (stale / "postmaster.pid").write_text(f"{bystander.pid}\n")
    live = tmp_path / f"datalayer-test-servers-p{alive}-efgh5678"
    live.mkdir()
    other = tmp_path / f"unrelated-p{dead}-x"
    other.mkdir()
    try:
        reaped = scratch_dirs.reap_stale()
        assert stale in reaped
        assert not stale.exists()
        assert live.exists()
        assert other.exists()
        assert server.wait(timeout=5) == -9
        assert bystander.poll() is None  # its pid was in the file, but it is not that server
    finally:
        for process in (server, bystander):
            process.kill()
            process.wait()
