"""Query coverage: which named queries of ``datalayer.repositories`` no test executed.

Loaded from ``tests/conftest.py`` (``pytest_plugins``). Every run records the name of
each query that goes through ``_exec.execute``, ``_exec.execute_each`` or
``_exec.copy_rows`` (the only three ways a repository executes SQL), in this process
and in every xdist worker; workers hand their sets to the controller through
``workeroutput``, xdist's channel for exactly this (no shared files, nothing stale from
an earlier run).

At the end of the run the controller compares the union with every query name declared
in ``REPOSITORIES[*].query_refs`` and, when it is **enforced**, lists the queries no test
executed and fails the run (exit status 1). It is enforced only when both hold:

* ``DATALAYER_QUERY_COVERAGE=1`` is set (``make test`` sets it), and
* the run is the whole suite: its arguments name the ``tests`` directory (or the project
  root, or nothing), and nothing was deselected (``-k``, ``-m``, ``--deselect``, ``--lf``
  all deselect) or left out (``--ignore``, ``--sw``).

A partial run with the variable set prints why coverage was not enforced. Queries run
only in a subprocess (the CLI tests) are not seen, and a query counts as executed
when a test called it, whether the statement then succeeded or raised.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

ENV_VAR = "DATALAYER_QUERY_COVERAGE"
_KEY = "datalayer_query_coverage"


def all_query_names() -> set[str]:
    """Every query name a repository declares."""
    from datalayer.repositories import REPOSITORIES

    return {ref.name for repo in REPOSITORIES for ref in repo.query_refs.values()}


class QueryCoverage:
    """Records executed query names; on the controller, merges and judges them."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.executed: set[str] = set()
        self.deselected = 0
        self.workers_seen = 0
        self._restore: list[tuple[Any, str, Any]] = []
        self.uncovered: list[str] = []
        self.note = ""

    # -- recording ------------------------------------------------------------
    def install(self) -> None:
        from datalayer import _exec

        executed = self.executed

        def wrap(module: Any, attr: str) -> None:
            original = getattr(module, attr)

            def recorded(session: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
                executed.add(query.name)
                return original(session, query, *args, **kwargs)

            recorded.__wrapped__ = original  # type: ignore[attr-defined]
            self._restore.append((module, attr, original))
            setattr(module, attr, recorded)

        wrap(_exec, "execute")
        wrap(_exec, "execute_each")
        wrap(_exec, "copy_rows")

    def uninstall(self) -> None:
        for owner, attr, original in reversed(self._restore):
            setattr(owner, attr, original)
        self._restore.clear()

    # -- hooks ----------------------------------------------------------------
    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        self.deselected += len(items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: merge what a finished worker recorded."""
        data = getattr(node, "workeroutput", {}).get(_KEY)
        if data is not None:
            self.executed.update(data["executed"])
            self.deselected += data["deselected"]
            self.workers_seen += 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: hand the set to the controller
            workeroutput[_KEY] = {"executed": sorted(self.executed), "deselected": self.deselected}
            return
        self.uncovered = sorted(all_query_names() - self.executed)
        reason = self._not_enforced_because()
        if reason:
            self.note = reason
            return
        if self.uncovered and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workeroutput") or os.environ.get(ENV_VAR) != "1":
            return
        tr = terminalreporter
        total = len(all_query_names())
        if self.note:
            tr.write_line(f"query coverage not enforced: {self.note}")
            return
        tr.section("query coverage")
        tr.write_line(f"{total - len(self.uncovered)} of {total} named queries executed by tests")
        if self.uncovered:
            tr.write_line(f"{len(self.uncovered)} never executed (run fails):", red=True)
            for name in self.uncovered:
                tr.write_line(f"  {name}")

    # -- judging --------------------------------------------------------------
    def _not_enforced_because(self) -> str:
        if os.environ.get(ENV_VAR) != "1":
            return f"{ENV_VAR} is not 1"
        opt = self.config.option
        if opt.collectonly:
            return "--collect-only ran no test"
        if getattr(opt, "numprocesses", None) and self.workers_seen == 0:
            return "no xdist worker reported"
        if self.deselected:
            return f"{self.deselected} tests were deselected"
        if getattr(opt, "ignore", None) or getattr(opt, "ignore_glob", None):
            return "--ignore left tests out"
        if getattr(opt, "stepwise", False) or getattr(opt, "keyword", "") or opt.markexpr:
            return "-k, -m or --sw selected a part of the suite"
        if not self._args_cover_suite(self.config.args):
            return f"the arguments {' '.join(self.config.args)} are not the whole suite"
        return ""

    def _args_cover_suite(self, args: Iterable[str]) -> bool:
        suite = self.config.rootpath / "tests"
        for arg in args:
            if "::" in arg:
                return False
            path = Path(self.config.invocation_params.dir, arg).resolve()
            if not (path == suite or path in suite.parents):
                return False
        return True


def pytest_configure(config: pytest.Config) -> None:
    plugin = QueryCoverage(config)
    plugin.install()
    config.pluginmanager.register(plugin, "datalayer-query-coverage")
    config.stash[_stash_key] = plugin


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(_stash_key, None)
    if plugin is not None:
        plugin.uninstall()


_stash_key = pytest.StashKey[QueryCoverage]()
