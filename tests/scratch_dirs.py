"""Where the test session's own servers keep their data: in memory when the machine allows.

Measured on the CI machine (2 cores, ext4 on a virtual disk), a PostgreSQL cluster
in a temporary directory spends most of its CPU time in the kernel: ``CREATE
DATABASE … TEMPLATE`` of the migrated template (~600 files) took 129 ms, 120 ms of
it system time, mostly in ``openat``; on tmpfs it takes 48 ms, and 21 ms with
``STRATEGY FILE_COPY`` (tests/clones.py). The suite makes ~600 such databases, and
the Citus session makes each on three nodes. So the scratch cluster, the Citus
cluster and the replica/PgBouncer clusters of the tests live under ``/dev/shm`` when
it is a tmpfs with room to spare (``DATALAYER_TEST_RAMDISK=0``: the system's
temporary directory, as before). Their data dies with the run either way.

A session killed before it could clean up (``kill -9``, a lost terminal) leaves its
servers running and, in memory, its data taking RAM. Every directory made here
carries the pid of the process that made it (``<prefix>p<pid>-…``); ``reap_stale``,
run once when a session starts, stops the servers of directories whose process is
gone and removes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

__all__ = ["reap_stale", "scratch_tempdir", "tests_temproot"]

RAMDISK = Path("/dev/shm")  # noqa: S108 (each directory in it is made by mkdtemp)
RAMDISK_MIN_FREE = 4 << 30  # bytes: a session's clusters use well under 1 GiB
_NAME = re.compile(r"^(?:datalayer-test-|dl-).*p(\d+)-[^/]*$")


def _ramdisk() -> Path | None:
    if os.environ.get("DATALAYER_TEST_RAMDISK", "1") == "0":
        return None
    try:
        stats = os.statvfs(RAMDISK)
    except OSError:
        return None
    if not os.access(RAMDISK, os.W_OK) or stats.f_bavail * stats.f_frsize < RAMDISK_MIN_FREE:
        return None
    return RAMDISK


def scratch_tempdir(prefix: str) -> Path:
    """A new directory for a test server's data: ``<base>/<prefix>p<pid>-XXXXXXXX``.

    ``prefix`` starts with ``datalayer-test-`` or ``dl-`` (what ``reap_stale`` looks for).
    """
    if not prefix.startswith(("datalayer-test-", "dl-")):
        raise ValueError(f"scratch directory prefix {prefix!r}: start it with 'dl-'")
    base = _ramdisk()
    return Path(tempfile.mkdtemp(prefix=f"{prefix}p{os.getpid()}-", dir=base))


def tests_temproot() -> None:
    """Put pytest's ``tmp_path`` directories on the ramdisk too (``PYTEST_DEBUG_TEMPROOT``,
    unless set): the wheel test's venv, dumps, archives. pyproject keeps only the
    directories of failed tests (``tmp_path_retention_policy``), so little stays in RAM."""
    base = _ramdisk()
    if base is not None:
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(base))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> list[Path]:
    """Stop the servers of scratch directories whose session is gone, and remove them."""
    reaped = []
    for base in {Path(tempfile.gettempdir()), RAMDISK}:
        with contextlib.suppress(OSError):
            for entry in base.iterdir():
                match = _NAME.match(entry.name)
                if match is None or not entry.is_dir() or _alive(int(match.group(1))):
                    continue
                for pid_file in entry.glob("**/postmaster.pid"):
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        pid = int(pid_file.read_text().split()[0])
                        # only a server of this directory, not whoever has its pid now
                        if str(entry).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                            os.kill(pid, signal.SIGKILL)
                shutil.rmtree(entry, ignore_errors=True)
                reaped.append(entry)
    return reaped
