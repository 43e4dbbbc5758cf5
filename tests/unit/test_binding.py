"""Binding repository declarations to loaded SQL; checking call parameters. No database."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from datalayer._loader import Query, load_sql_dir, merge, parse_sql
from datalayer._repository import (
    Repository,
    bind_repositories,
    execrows,
    execute,
    many,
    one,
    scalar,
)
from datalayer._resources import sql_dir
from datalayer.errors import SQLLoadError

WIDGETS_SQL = """\
-- name: get_widget :one
SELECT id, name FROM widgets WHERE id = :id;

-- name: list_widgets :many
SELECT id, name FROM widgets WHERE owner_id = :owner_id ORDER BY id LIMIT :limit;

-- name: count_widgets :scalar
SELECT count(*) FROM widgets;

-- name: delete_widget :exec
DELETE FROM widgets WHERE id = :id;

-- name: purge_widgets :execrows
DELETE FROM widgets WHERE deleted_at < :before;
"""

GADGETS_SQL = "-- name: get_gadget :one\nSELECT id, name FROM gadgets WHERE id = :id;\n"


@dataclass
class Widget:
    id: int
    name: str


def catalog(*files: tuple[str, str]) -> dict[str, Query]:
    return merge(parse_sql(text, path) for text, path in files)


def widgets_catalog() -> dict[str, Query]:
    return catalog((WIDGETS_SQL, "sql/widgets.sql"))


def widget_repository(**overrides: Any) -> type[Repository]:
    """A fresh ``widgets`` repository class (binding mutates class attributes).

    Keyword arguments replace declarations by attribute name; ``None`` removes one.
    """
    declarations: dict[str, Any] = {
        "_get": one("get_widget", Widget),
        "_list": many("list_widgets", Widget),
        "_count": scalar("count_widgets", int),
        "_delete": execute("delete_widget"),
        "_purge": execrows("purge_widgets"),
    }
    declarations.update(overrides)
    body: dict[str, Any] = {"aggregate": "widgets"}
    body.update({k: v for k, v in declarations.items() if v is not None})
    return type("WidgetRepository", (Repository,), body)


class ExplodingSession:
    """A session that must not be used: the parameter check comes before the connection."""

    def connection(self, **_: Any) -> AbstractContextManager[Any]:
        raise AssertionError("the session was touched")


# -- binding ----------------------------------------------------------------------------------


def test_correct_binding_sets_every_declarations_query() -> None:
    repo = widget_repository()
    queries = widgets_catalog()
    bind_repositories(queries, [repo])
    assert {attr: ref.query for attr, ref in repo.query_refs.items()} == {
        "_get": queries["get_widget"],
        "_list": queries["list_widgets"],
        "_count": queries["count_widgets"],
        "_delete": queries["delete_widget"],
        "_purge": queries["purge_widgets"],
    }


def test_declarations_are_inherited_by_subclasses() -> None:
    base = widget_repository()
    child: type[Repository] = type(
        "ChildWidgetRepository", (base,), {"_extra": one("get_gadget", Widget)}
    )
    assert set(child.query_refs) == {"_get", "_list", "_count", "_delete", "_purge", "_extra"}


def test_declaration_naming_a_missing_query_is_refused() -> None:
    repo = widget_repository(_get=one("get_widgett", Widget))
    with pytest.raises(SQLLoadError) as info:
        bind_repositories(widgets_catalog(), [repo])
    assert "WidgetRepository._get names query get_widgett" in str(info.value)
    assert "expected in widgets.sql" in str(info.value)


def test_query_from_another_aggregates_file_is_refused_at_that_query() -> None:
    repo = widget_repository(_gadget=one("get_gadget", Widget))
    queries = catalog((WIDGETS_SQL, "sql/widgets.sql"), (GADGETS_SQL, "sql/gadgets.sql"))
    with pytest.raises(SQLLoadError, match=r"lives in gadgets\.sql") as info:
        bind_repositories(queries, [repo])
    assert "query get_gadget is used by WidgetRepository._gadget" in str(info.value)
    assert "'widgets'" in str(info.value)
    assert (info.value.path, info.value.line) == (Path("sql/gadgets.sql"), 1)


@pytest.mark.parametrize(
    ("attr", "declaration", "declared", "line"),
    [
        ("_get", many("get_widget", Widget), "many() (:many)", 1),
        ("_list", one("list_widgets", Widget), "one() (:one)", 4),
        ("_count", one("count_widgets", Widget), "one() (:one)", 7),
        ("_delete", execrows("delete_widget"), "execrows() (:execrows)", 10),
        ("_purge", execute("purge_widgets"), "execute() (:exec)", 13),
    ],
)
def test_cardinality_mismatch_is_refused_at_the_query_header(
    attr: str, declaration: Any, declared: str, line: int
) -> None:
    repo = widget_repository(**{attr: declaration})
    with pytest.raises(SQLLoadError) as info:
        bind_repositories(widgets_catalog(), [repo])
    assert f"declares it with {declared}" in str(info.value)
    assert f"WidgetRepository.{attr}" in str(info.value)
    assert (info.value.path, info.value.line) == (Path("sql/widgets.sql"), line)


def test_query_no_repository_uses_is_refused_at_its_header() -> None:
    repo = widget_repository(_purge=None)
    with pytest.raises(
        SQLLoadError, match="query purge_widgets is not used by any repository"
    ) as info:
        bind_repositories(widgets_catalog(), [repo])
    assert (info.value.path, info.value.line) == (Path("sql/widgets.sql"), 13)


def test_query_used_by_any_of_several_repositories_counts_as_used() -> None:
    gadgets: type[Repository] = type(
        "GadgetRepository",
        (Repository,),
        {"aggregate": "gadgets", "_get": one("get_gadget", Widget)},
    )
    queries = catalog((WIDGETS_SQL, "sql/widgets.sql"), (GADGETS_SQL, "sql/gadgets.sql"))
    bind_repositories(queries, [widget_repository(), gadgets])
    assert gadgets.query_refs["_get"].query is queries["get_gadget"]


# -- calling ----------------------------------------------------------------------------------


def bound_widgets() -> Repository:
    repo = widget_repository()
    bind_repositories(widgets_catalog(), [repo])
    return repo(ExplodingSession())


@pytest.mark.parametrize(
    ("attr", "params", "expected"),
    [
        ("_get", {}, "query get_widget (sql/widgets.sql:1): missing id"),
        ("_get", {"id": 1, "name": "x"}, "query get_widget (sql/widgets.sql:1): unexpected name"),
        ("_list", {"limit": 5}, "query list_widgets (sql/widgets.sql:4): missing owner_id"),
        (
            "_list",
            {"owner": 1, "limit": 5},
            "query list_widgets (sql/widgets.sql:4): missing owner_id; unexpected owner",
        ),
        ("_count", {"id": 1}, "query count_widgets (sql/widgets.sql:7): unexpected id"),
        (
            "_delete",
            {"ids": [1]},
            "query delete_widget (sql/widgets.sql:10): missing id; unexpected ids",
        ),
        ("_purge", {}, "query purge_widgets (sql/widgets.sql:13): missing before"),
    ],
)
def test_wrong_keyword_parameters_raise_type_error_before_touching_the_session(
    attr: str, params: dict[str, Any], expected: str
) -> None:
    call = getattr(bound_widgets(), attr)
    with pytest.raises(TypeError) as info:
        call(**params)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("attr", "params"),
    [
        ("_get", {"id": 1}),
        ("_list", {"owner_id": 1, "limit": 5}),
        ("_count", {}),
        ("_delete", {"id": 1}),
        ("_purge", {"before": "2024-01-01"}),
    ],
)
def test_exact_keyword_parameters_go_on_to_the_session(attr: str, params: dict[str, Any]) -> None:
    call = getattr(bound_widgets(), attr)
    with pytest.raises(AssertionError, match="the session was touched"):
        call(**params)


def test_calling_an_unbound_declaration_is_refused_before_touching_the_session() -> None:
    call = widget_repository()(ExplodingSession())._get  # type: ignore[attr-defined]
    with pytest.raises(SQLLoadError, match="query get_widget was never bound"):
        call(id=1)


# -- the real repositories --------------------------------------------------------------------


def test_importing_repositories_bound_every_declaration_to_the_query_it_names() -> None:
    from datalayer.repositories import REPOSITORIES

    for repo in REPOSITORIES:
        for attr, ref in repo.query_refs.items():
            assert ref.query is not None, f"{repo.__name__}.{attr} is unbound"
            assert ref.query.name == ref.name
            assert ref.query.aggregate == repo.aggregate
            assert ref.query.cardinality == ref.cardinality


def test_every_query_in_sql_dir_is_used_by_a_real_repository() -> None:
    from datalayer.repositories import REPOSITORIES

    used = {ref.name for repo in REPOSITORIES for ref in repo.query_refs.values()}
    assert used == set(load_sql_dir(sql_dir()))


def test_a_huge_or_nested_cursor_is_refused_as_invalid_input_not_a_crash() -> None:
    import base64

    from datalayer import InvalidInput
    from datalayer._paging import decode_cursor

    nested = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    for cursor in (nested, "a" * 201):
        with pytest.raises(InvalidInput) as info:
            decode_cursor(cursor)
        assert info.value.field == "cursor"


def test_every_public_repository_method_documents_what_it_raises() -> None:
    import inspect

    from datalayer.repositories import REPOSITORIES

    missing = [
        f"{repo.__name__}.{name}"
        for repo in REPOSITORIES
        for name, fn in inspect.getmembers(repo, inspect.isfunction)
        if not name.startswith("_") and "raise" not in (inspect.getdoc(fn) or "").lower()
    ]
    assert missing == []


def test_every_public_method_with_arguments_validates_them_before_it_runs() -> None:
    """Every public entry point of the repositories and cached reads is ``@validated``.

    (The hostile sweep, tests/integration/test_hostile_public_methods.py,
    then shows the validation is enough.) Methods without arguments have
    nothing to validate.
    """
    import inspect

    from datalayer import CachedReads
    from datalayer.repositories import REPOSITORIES

    unvalidated = [
        f"{cls.__name__}.{name}"
        for cls in (*REPOSITORIES, CachedReads)
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
        and [p for p in inspect.signature(fn).parameters if p != "self"]
        and not getattr(fn, "__validated__", False)
    ]
    assert unvalidated == []
