"""tests/servers.py: the fallback switch, and how tests that need a missing part end.

A missing part skips its tests with one summary line at the end (proven on a small suite
run by a pytest subprocess under xdist, as ``make test`` runs, so the line is the
controller's sum of its workers' reports), fails them under ``CI=true``, and skips them
even there when ``DATALAYER_TEST_WITHOUT`` leaves the part out on purpose.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import servers

TESTS = Path(__file__).resolve().parents[1]

SUITE = """
import pytest
import servers

servers.register_part("unicorn", lambda: "no unicorn in this stable")
servers.register_part("pony", lambda: None)


@pytest.fixture
def saddle():
    servers.part_missing("saddle", "the saddle fixture found none")


@pytest.mark.requires_parts("unicorn")
def test_rides_a_unicorn():
    raise AssertionError("must not run without its part")


@pytest.mark.requires_parts("unicorn", "pony")
def test_rides_both():
    raise AssertionError("must not run without its part")


@pytest.mark.requires_parts("pony")
def test_rides_a_pony():
    assert servers.missing_reason("pony") is None


def test_rides_saddled(saddle):
    raise AssertionError("must not run without its part")
"""


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_parts.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["servers"]\n')
    drop = ("CI", "DATALAYER_TEST_WITHOUT")
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist.plugin", "-n", "2", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        # No other plugins (hypothesis, pytest-postgresql): they only slow the start down.
        env={**base, "PYTHONPATH": str(TESTS), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip


def _summary(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("did not run")]


def test_missing_parts_skip_and_are_summed_up_in_one_line(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 3 skipped" in done.stdout
    assert _summary(done.stdout) == [
        "did not run 3 tests for want of parts: 1 need saddle: the saddle fixture found none; "
        "2 need unicorn: no unicorn in this stable"
    ]


def test_under_ci_a_missing_part_fails_unless_left_out_on_purpose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("DATALAYER_TEST_WITHOUT", "citus, replica")
    with pytest.raises(pytest.fail.Exception, match=r"^needs part pgbouncer: gone \(CI=true"):
        servers.part_missing("pgbouncer", "gone")
    with pytest.raises(pytest.skip.Exception, match=r"^needs part replica: gone$"):
        servers.part_missing("replica", "gone")
    assert servers.missing_reason("citus") == "left out by DATALAYER_TEST_WITHOUT"
    monkeypatch.setenv("DATALAYER_TEST_WITHOUT", "all")
    assert {part: servers.missing_reason(part) for part in ("pgbouncer", "replica")} == {
        "pgbouncer": "left out by DATALAYER_TEST_WITHOUT",
        "replica": "left out by DATALAYER_TEST_WITHOUT",
    }
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"^needs part pgbouncer: gone$"):
        servers.part_missing("pgbouncer", "gone")


def test_an_unknown_part_is_an_error_not_a_skip() -> None:
    with pytest.raises(KeyError, match="unknown part 'unicron'"):
        servers.missing_reason("unicron")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe closes


def test_with_the_fallback_off_nothing_is_started_and_the_header_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg, rd = _closed_port(), _closed_port()
    monkeypatch.delenv(servers.RESOLVED_VAR)
    monkeypatch.setenv("DATALAYER_TEST_EMBEDDED", "0")
    monkeypatch.setenv("DATALAYER_TEST_PG_PORT", str(pg))
    monkeypatch.setenv("DATALAYER_TEST_REDIS_URL", f"redis://127.0.0.1:{rd}/3")
    path = os.environ["PATH"]
    header = servers.resolve()
    assert header == (
        f"servers: PostgreSQL at 127.0.0.1:{pg}: nothing answers (embedded fallback off); "
        f"Redis at 127.0.0.1:{rd}: nothing answers (embedded fallback off)"
    )
    assert os.environ["DATALAYER_TEST_PG_PORT"] == str(pg)
    assert os.environ["DATALAYER_TEST_REDIS_URL"] == f"redis://127.0.0.1:{rd}/3"
    assert os.environ["PATH"] == path
    assert servers.redis_server_url() == f"redis://127.0.0.1:{rd}"
