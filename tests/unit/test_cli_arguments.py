"""The ``datalayer`` command refuses bad arguments before any I/O, with a usage error."""

from __future__ import annotations

import pytest

from datalayer._cli import main

# A closed port: had any command run, main() would return 2 after a failed
# connection; only argparse's usage errors leave by SystemExit.
URL = "postgresql://postgres@127.0.0.1:1/never"

BAD = [
    ["rollback", "--count", "0"],
    ["rollback", "--count", "x"],
    ["partitions", "ensure", "--ahead", "-1"],
    ["partitions", "ensure", "--ahead", "99999999999999999999"],
    ["partitions", "ensure", "--from", "2026-13"],
    ["partitions", "ensure", "--from", "0001-01"],
    ["partitions", "ensure", "--from", "\ud800"],
    ["partitions", "frobnicate"],
    ["rollups", "refresh", "--batch-size", "0"],
    ["seed", "--accounts", "-5"],
    ["seed", "--events", "1e9"],
    ["seed", "--seed", "-1"],
    ["bench", "--iterations", "0"],
    ["bench", "--events", "nan"],
    ["bench", "--pool-sweep", "--sweep-seconds", "nan"],
    ["bench", "--pool-sweep", "--sweep-seconds", "-3"],
    ["archive", "--older-than-months", "0"],
    ["export-account", "0", "--out", "x.tar.gz"],
    ["export-account", "-1", "--out", "x.tar.gz"],
    ["export-account", str(2**63), "--out", "x.tar.gz"],
    ["export-account", "abc", "--out", "x.tar.gz"],
    ["restore", "dump.dump"],
    ["billing", "run", "--now", "2026-01-01T00:00:00"],
    ["billing", "run", "--now", "yesterday"],
    ["billing", "run", "--now", "9999-12-31T23:00:00-05:00"],
    ["billing", "run", "--grace-minutes", "-1"],
    ["billing", "run", "--batch-size", "0"],
    ["billing", "invoice"],
]


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) for a in BAD])
def test_a_bad_argument_is_a_usage_error_naming_it_before_any_connection(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--database-url", URL, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err
    assert "Traceback" not in err
