"""Mutation testing of datalayer's pure modules against their unit tests (``make mutation``).

Each mutant changes one AST node of one module (a comparison, a boolean operator,
an arithmetic operator, a constant, a ``not``, a unary minus, a return value). For
every mutant a child process forked from a warm parent (third-party libraries and
datalayer already imported) swaps the mutated module in, rebinds the names other
datalayer modules imported from it, and runs the module's unit tests with pytest
(``-x``: the first failure kills it). A mutant survives when every test passes.

Mutants that no test can kill because they do not change behaviour are listed,
with a line of reasoning each, in ``tools/mutation-equivalents.txt``; an entry that
no longer names a mutant, or names one the tests kill, is an error too. The run
fails when a module kills fewer than ``--threshold`` (95%) of its non-equivalent
mutants.

Usage: python tools/mutate.py [--jobs 2] [--module datalayer/_billing.py] [--list]
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "tools" / "mutation-equivalents.txt"
# A test gets this long, plus ten times its unmutated time, before its mutant counts as
# looping (killed by timeout).
PER_TEST_SECONDS = 5.0

# module -> the unit tests that speak for it
MODULES: dict[str, list[str]] = {
    "datalayer/_billing.py": ["tests/unit/test_billing_rules.py"],
    "datalayer/_sqlparse.py": ["tests/unit/test_sqlparse.py"],
    "datalayer/_loader.py": ["tests/unit/test_loader.py"],
    "datalayer/_validation.py": ["tests/unit/test_validation.py"],
    "datalayer/_apikey.py": ["tests/unit/test_api_key_format.py"],
    "datalayer/_cachecore.py": ["tests/unit/test_cache_unit.py"],
    "datalayer/_paging.py": ["tests/unit/test_paging.py"],
    # generated from _fanout_async.py; the sync claim is the one the unit tests drive
    "datalayer/_fanout.py": ["tests/unit/test_fanout.py"],
}

_SWAPS: dict[type[ast.AST], list[type[ast.AST]]] = {
    # comparison swaps and boundaries
    ast.Lt: [ast.LtE, ast.Gt],
    ast.LtE: [ast.Lt, ast.GtE],
    ast.Gt: [ast.GtE, ast.Lt],
    ast.GtE: [ast.Gt, ast.LtE],
    ast.Eq: [ast.NotEq],
    ast.NotEq: [ast.Eq],
    ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
    ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is],
    # boolean and arithmetic operators
    ast.And: [ast.Or],
    ast.Or: [ast.And],
    ast.Add: [ast.Sub],
    ast.Sub: [ast.Add],
    ast.Mult: [ast.FloorDiv],
    ast.FloorDiv: [ast.Mult],
    ast.Div: [ast.Mult],
    ast.Mod: [ast.FloorDiv],
    ast.Pow: [ast.Mult],
}


@dataclass
class Mutant:
    module: str
    ident: str  # stable across unrelated edits: module:scope:operator#occurrence
    line: int
    description: str
    source: str
    status: str = ""  # killed, survived, timeout, equivalent


def _name(node: ast.AST) -> str:
    return type(node).__name__


def _const(value: object) -> str:
    return repr(value)


class _Sites(ast.NodeVisitor):
    """Every mutation site: (node, scope, key, description, apply, undo)."""

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.sites: list[tuple[str, int, str, object]] = []
        self._skip: set[int] = set()
        self._index: set[int] = set()

    # -- what is never mutated: docstrings, annotations, __all__, f-string internals ------
    def _mark_skip(self, node: ast.AST | None) -> None:
        if node is None:
            return
        for sub in ast.walk(node):
            self._skip.add(id(sub))

    def visit_Module(self, node: ast.Module) -> None:
        self._skip_docstring(node.body)
        self.generic_visit(node)

    def _skip_docstring(self, body: list[ast.stmt]) -> None:
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            self._mark_skip(body[0])

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self._skip_docstring(node.body)
        if not isinstance(node, ast.ClassDef):
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                self._mark_skip(arg.annotation)
            for arg in (node.args.vararg, node.args.kwarg):
                if arg is not None:
                    self._mark_skip(arg.annotation)
            self._mark_skip(node.returns)
        for decorator in node.decorator_list:
            self._mark_skip(decorator)
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = _scoped  # noqa: N815 - ast.NodeVisitor's names
    visit_AsyncFunctionDef = _scoped  # noqa: N815
    visit_ClassDef = _scoped  # noqa: N815

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._mark_skip(node.annotation)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            self._mark_skip(node)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        # Format specs are text; the expressions inside are still mutated.
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                self._mark_skip(value.format_spec)
        self.generic_visit(node)

    def _add(self, node: ast.AST, key: str, change: object) -> None:
        if id(node) in self._skip:
            return
        scope = ".".join(self.scope) or "<module>"
        self.sites.append((f"{scope}:{key}", getattr(node, "lineno", 0), key, (node, change)))

    # -- the operators ------------------------------------------------------------------------
    def visit_Compare(self, node: ast.Compare) -> None:
        for index, op in enumerate(node.ops):
            for new in _SWAPS.get(type(op), []):
                self._add(node, f"{_name(op)}->{new.__name__}", ("cmp", index, new))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        for new in _SWAPS.get(type(node.op), []):
            self._add(node, f"{_name(node.op)}->{new.__name__}", ("boolop", new))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)):
            for new in _SWAPS.get(type(node.op), []):
                self._add(node, f"{_name(node.op)}->{new.__name__}", ("binop", new))
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        for new in _SWAPS.get(type(node.op), []):
            self._add(node, f"{_name(node.op)}=->{new.__name__}=", ("augop", new))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._add(node, "not-removed", ("unary",))
        elif isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self._add(node, "minus-removed", ("unary",))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # An index or a slice bound written as a number (x[0], x[-1], x[:20]); not the
        # arguments of Annotated[...] and other subscripted types.
        bounds = (
            [node.slice.lower, node.slice.upper, node.slice.step]
            if isinstance(node.slice, ast.Slice)
            else [node.slice]
        )
        for bound in bounds:
            if isinstance(bound, ast.UnaryOp) and isinstance(bound.op, ast.USub):
                bound = bound.operand
            if isinstance(bound, ast.Constant):
                self._index.add(id(bound))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # True <-> False; 0 <-> 1; any other int only as an index or slice bound (n -> n+1).
        value = node.value
        if isinstance(value, bool):
            self._add(node, f"{value}->{not value}", ("const", not value))
        elif isinstance(value, int) and (value in (0, 1) or id(node) in self._index):
            new = 1 if value == 0 else 0 if value == 1 else value + 1
            self._add(node, f"{value}->{new}", ("const", new))

    def visit_Return(self, node: ast.Return) -> None:
        value = node.value
        trivial = isinstance(value, ast.Constant) and (
            value.value is None or isinstance(value.value, bool)
        )
        # None stays None; True and False are the constant operator's.
        if value is not None and not trivial:
            self._add(node, "return->None", ("return",))
        self.generic_visit(node)


def _parents(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    parents: dict[int, tuple[ast.AST, str, int | None]] = {}
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        parents[id(item)] = (parent, name, index)
            elif isinstance(value, ast.AST):
                parents[id(value)] = (parent, name, None)
    return parents


def _mutated_source(
    tree: ast.Module,
    parents: dict[int, tuple[ast.AST, str, int | None]],
    node: ast.AST,
    change: tuple[object, ...],
) -> str:
    """The module's source with ``change`` applied to ``node`` (the tree is left as it was)."""
    kind = change[0]
    if kind == "unary":
        parent, name, index = parents[id(node)]
        operand = node.operand  # type: ignore[attr-defined]
        if index is None:
            setattr(parent, name, operand)
        else:
            getattr(parent, name)[index] = operand
        try:
            return ast.unparse(tree)
        finally:
            if index is None:
                setattr(parent, name, node)
            else:
                getattr(parent, name)[index] = node
    attribute = {"cmp": "ops", "const": "value", "return": "value"}.get(str(kind), "op")
    old = getattr(node, attribute)
    if kind == "cmp":
        new: object = list(old)
        new[change[1]] = change[2]()  # type: ignore[index, operator]
    elif kind == "const":
        new = change[1]
    elif kind == "return":
        new = ast.Constant(None)
    else:
        new = change[1]()  # type: ignore[operator]
    setattr(node, attribute, new)
    try:
        return ast.unparse(tree)
    finally:
        setattr(node, attribute, old)


def mutants_of(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / module).read_text())
    parents = _parents(tree)
    sites = _Sites()
    sites.visit(tree)
    seen: Counter[str] = Counter()
    result = []
    for key, line, description, (node, change) in sites.sites:  # type: ignore[misc]
        seen[key] += 1
        result.append(
            Mutant(
                module=module,
                ident=f"{module}:{key}#{seen[key]}",
                line=line,
                description=description,
                source=_mutated_source(tree, parents, node, change),
            )
        )
    return result


# -- running ----------------------------------------------------------------------------------


def _module_name(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


_PRIMITIVE = (int, float, str, bytes, bool, type(None), tuple, frozenset)


def _swap_in(module: str, source: str) -> None:
    """Replace ``module`` in this (child) process by ``source`` and rebind what others imported.

    The module object keeps its identity (``import datalayer._x as x`` still works); its
    namespace is executed again from the mutated source. Every other datalayer module
    that holds one of its old objects (``from ._x import f``) gets the new one.
    """
    name = _module_name(module)
    target = sys.modules[name]
    old = dict(target.__dict__)
    code = compile(source, str(ROOT / module), "exec")
    exec(code, target.__dict__)  # noqa: S102 - the mutant is our own module's source
    new = target.__dict__
    by_identity = {
        id(value): new[key]
        for key, value in old.items()
        if key in new and new[key] is not value and not isinstance(value, _PRIMITIVE)
    }
    for other_name, other in list(sys.modules.items()):
        if other is target or not other_name.startswith("datalayer") or other is None:
            continue
        namespace = getattr(other, "__dict__", None)
        if namespace is None:
            continue
        for key, value in list(namespace.items()):
            if key in old and value is old[key] and key in new and new[key] is not value:
                namespace[key] = new[key]
            elif id(value) in by_identity and not isinstance(value, _PRIMITIVE):
                namespace[key] = by_identity[id(value)]


_SELECT: list[str] = []  # extra pytest arguments (--select: -k EXPR), set by main


def _pytest_args(tests: list[str]) -> list[str]:
    # Plugins are not auto-loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD, set by _warm_up): only
    # hypothesis is needed; plain asserts skip rewriting every module in every child.
    return [
        "-x",
        "-q",
        "--assert=plain",
        "-p",
        "hypothesis.extra.pytestplugin",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:unraisableexception",
        *_SELECT,
        *[str(ROOT / t) for t in tests],
    ]


class _TimeLimit:
    """SIGALRM (which ends the child: a timeout, so killed) for a test that runs too long.

    Each test gets ``PER_TEST_SECONDS`` plus ten times what it took unmutated (a loaded
    machine slows every test alike, a mutant that loops never ends); between tests
    (collection, fixtures) the whole run's limit applies. The baseline run records the
    durations (``record`` set) instead.
    """

    def __init__(self, durations: dict[str, float], between: float, record: bool = False):
        self.durations = durations
        self.between = between
        self.record = record
        self._started = 0.0

    def pytest_runtest_call(self, item: object) -> None:
        nodeid = str(getattr(item, "nodeid", ""))
        self._started = time.monotonic()
        limit = PER_TEST_SECONDS + 10 * self.durations.get(nodeid, PER_TEST_SECONDS)
        signal.setitimer(signal.ITIMER_REAL, limit)

    def pytest_runtest_teardown(self, item: object) -> None:
        if self.record:
            self.durations[str(getattr(item, "nodeid", ""))] = time.monotonic() - self._started
        signal.setitimer(signal.ITIMER_REAL, self.between)


def _child(
    module: str | None,
    source: str | None,
    tests: list[str],
    timeout: float,
    durations: dict[str, float],
    record: Path | None = None,
) -> int:
    """In a forked child: swap the mutant in, run the tests, return pytest's exit code."""
    import pytest

    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, timeout)  # a mutant that loops forever dies: killed
    devnull = os.open(os.devnull, os.O_WRONLY)
    if not os.environ.get("MUTATE_VERBOSE"):
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    if module is not None and source is not None:
        _swap_in(module, source)
    limit = _TimeLimit(dict(durations), timeout, record=record is not None)
    code = int(pytest.main(_pytest_args(tests), plugins=[limit]))
    if record is not None:
        record.write_text(json.dumps(limit.durations))
    return code


def _warm_up() -> None:
    """Import what every child needs once, in the parent."""
    os.environ.pop("DATALAYER_QUERY_COVERAGE", None)
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    sys.path.insert(0, str(ROOT / "tests"))
    import hypothesis

    hypothesis.settings.register_profile(
        "mutation", database=None, derandomize=True, deadline=None, print_blob=False
    )
    hypothesis.settings.load_profile("mutation")
    os.environ["HYPOTHESIS_PROFILE"] = "mutation"
    import pytest  # noqa: F401
    import pytest_postgresql.factories  # noqa: F401

    for module in MODULES:
        __import__(_module_name(module))
    from _pytest.config import default_plugins

    for plugin in default_plugins:
        __import__(f"_pytest.{plugin}")
    import hypothesis.extra.pytestplugin

    # Children neither collect nor copy (on write) what the parent has already built.
    gc.collect()
    gc.freeze()


def _fork(
    module: str | None,
    source: str | None,
    tests: list[str],
    timeout: float,
    durations: dict[str, float],
    record: Path | None = None,
) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            code = _child(module, source, tests, timeout, durations, record)
        except BaseException:
            code = 99
        os._exit(code)
    return pid


def _outcome(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "timeout" if os.WTERMSIG(status) == signal.SIGALRM else "killed"
    code = os.WEXITSTATUS(status)
    return {0: "survived", 4: "error", 5: "error"}.get(code, "killed")


def _baseline(tests: list[str]) -> tuple[float, dict[str, float]]:
    """How long the tests take unmutated, in all and each; they must pass."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "durations.json"
        pid = _fork(None, None, tests, 600, {}, record)
        _, status = os.waitpid(pid, 0)
        if _outcome(status) != "survived":
            raise SystemExit(f"the unit tests fail without any mutant: {' '.join(tests)}")
        durations: dict[str, float] = json.loads(record.read_text())
    return time.monotonic() - started, durations


def run(mutants: list[Mutant], jobs: int) -> None:
    timeouts: dict[str, float] = {}
    durations: dict[str, dict[str, float]] = {}
    for module in sorted({m.module for m in mutants}):
        took, durations[module] = _baseline(MODULES[module])
        timeouts[module] = 30 + 10 * took
    queue: Iterator[Mutant] = iter(mutants)
    running: dict[int, Mutant] = {}
    done = 0
    while True:
        while len(running) < jobs:
            mutant = next(queue, None)
            if mutant is None:
                break
            pid = _fork(
                mutant.module,
                mutant.source,
                MODULES[mutant.module],
                timeouts[mutant.module],
                durations[mutant.module],
            )
            running[pid] = mutant
        if not running:
            break
        pid, status = os.wait()
        mutant = running.pop(pid)
        mutant.status = _outcome(status)
        done += 1
        if mutant.status == "error":
            raise SystemExit(f"pytest could not run for {mutant.ident}")
        if done % 50 == 0:
            print(f"  {done}/{len(mutants)} mutants run", flush=True)


# -- equivalents ------------------------------------------------------------------------------


def read_equivalents() -> dict[str, str]:
    """``ident  # reason`` lines; blank lines and lines starting with # are ignored."""
    result: dict[str, str] = {}
    for number, raw in enumerate(EQUIVALENTS.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        ident, sep, reason = line.partition(" # ")
        if not sep or not reason.strip():
            raise SystemExit(f"{EQUIVALENTS.name}:{number}: no reason given for {ident}")
        result[ident.strip()] = reason.strip()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--module", action="append", help="only this module (repeatable)")
    parser.add_argument("--threshold", type=float, default=95.0)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--show", help="print the diff of one mutant id")
    parser.add_argument("--only", action="append", help="run only this mutant id (repeatable)")
    parser.add_argument("--select", help="with --only: run only the tests matching pytest -k")
    parser.add_argument("--out", type=Path, help="write every mutant's outcome to this file")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    modules = args.module or list(MODULES)
    mutants = [m for module in modules for m in mutants_of(module)]
    if args.list:
        for m in mutants:
            print(f"{m.ident}  line {m.line}")
        return 0
    if args.show:
        import difflib

        [m] = [m for m in mutants if m.ident == args.show]
        original = ast.unparse(ast.parse((ROOT / m.module).read_text()))
        sys.stdout.writelines(
            difflib.unified_diff(
                original.splitlines(True), m.source.splitlines(True), m.module, m.ident
            )
        )
        return 0
    if args.only:
        if args.select:
            _SELECT.extend(["-k", args.select])
        mutants = [m for m in mutants if m.ident in args.only]
        _warm_up()
        run(mutants, args.jobs)
        for m in mutants:
            print(f"{m.status:9} {m.ident}")
        return 0
    equivalents = read_equivalents()
    known = {m.ident for m in mutants}
    errors = []
    for ident in equivalents:
        module = ident.split(":", 1)[0]
        if module in modules and ident not in known:
            errors.append(f"{ident}: listed as equivalent but there is no such mutant any more")
    started = time.monotonic()
    print(f"mutation: {len(mutants)} mutants of {len(modules)} modules, {args.jobs} jobs")
    _warm_up()
    run(mutants, args.jobs)
    elapsed = time.monotonic() - started
    if args.out:
        args.out.write_text(
            "".join(
                f"{'equivalent' if m.ident in equivalents else m.status:10} {m.ident}  "
                f"(line {m.line})\n"
                for m in mutants
            )
        )
    failed = False
    print(f"\n{'module':28} {'killed':>7} {'total':>6} {'equiv':>6} {'score':>7}")
    for module in modules:
        ours = [m for m in mutants if m.module == module]
        equivalent = [m for m in ours if m.ident in equivalents]
        for m in equivalent:
            if m.status != "survived":
                errors.append(f"{m.ident}: listed as equivalent but the tests kill it")
        counted = [m for m in ours if m.ident not in equivalents]
        killed = [m for m in counted if m.status in ("killed", "timeout")]
        score = 100.0 * len(killed) / len(counted) if counted else 100.0
        low = score < args.threshold
        failed |= low
        print(
            f"{module:28} {len(killed):>7} {len(counted):>6} {len(equivalent):>6} "
            f"{score:>6.1f}%{'  BELOW ' + str(args.threshold) + '%' if low else ''}"
        )
        for m in counted:
            if m.status == "survived":
                print(f"    survived: {m.ident}  (line {m.line})")
    print(f"\n{len(mutants)} mutants in {elapsed:.0f} s")
    for error in errors:
        print(f"error: {error}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
