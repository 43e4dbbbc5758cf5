"""Reading named queries from SQL text and folders: the split, and every strict refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datalayer._loader import by_aggregate, load_sql_dir, merge, parse_sql
from datalayer.errors import SQLLoadError

WIDGETS = """\
-- Widgets: things an account owns.

-- name: get_widget :one
-- One widget by id.
--   Deleted ones included.
SELECT id, name
FROM widgets
WHERE id = :id;

-- name: list_widgets :many
SELECT id, name FROM widgets WHERE name LIKE 'w%' ORDER BY id LIMIT :limit;
"""


def load_error(text: str, path: str = "sql/widgets.sql") -> SQLLoadError:
    with pytest.raises(SQLLoadError) as info:
        parse_sql(text, path)
    return info.value


# -- the split --------------------------------------------------------------------------------


def test_file_is_split_into_queries_at_their_headers() -> None:
    get, list_ = parse_sql(WIDGETS, "sql/widgets.sql")
    assert (get.name, get.cardinality, get.line) == ("get_widget", "one", 3)
    assert (list_.name, list_.cardinality, list_.line) == ("list_widgets", "many", 10)


def test_body_is_the_sql_under_the_doc_comment() -> None:
    get, _ = parse_sql(WIDGETS, "sql/widgets.sql")
    assert get.text == "SELECT id, name\nFROM widgets\nWHERE id = :id;"
    assert get.sql == "SELECT id, name\nFROM widgets\nWHERE id = %(id)s"
    assert get.positional_sql == "SELECT id, name\nFROM widgets\nWHERE id = $1"
    assert get.params == ("id",)


def test_doc_collects_comment_lines_under_the_header_without_dashes() -> None:
    get, list_ = parse_sql(WIDGETS, "sql/widgets.sql")
    assert get.doc == "One widget by id.\nDeleted ones included."
    assert list_.doc == ""


def test_comment_inside_the_body_is_sql_not_doc() -> None:
    text = "-- name: get_widget :one\n-- Doc.\nSELECT 1\n-- not doc\nFROM t;\n"
    (query,) = parse_sql(text, "widgets.sql")
    assert query.doc == "Doc."
    assert query.text == "SELECT 1\n-- not doc\nFROM t;"


def test_percent_in_body_is_doubled_only_in_psycopg_sql() -> None:
    _, list_ = parse_sql(WIDGETS, "sql/widgets.sql")
    assert "LIKE 'w%%'" in list_.sql
    assert "LIKE 'w%'" in list_.positional_sql


def test_query_knows_its_file_aggregate_and_location() -> None:
    get, _ = parse_sql(WIDGETS, "sql/widgets.sql")
    assert get.path == Path("sql/widgets.sql")
    assert get.aggregate == "widgets"
    assert get.location == "sql/widgets.sql:3"


def test_crlf_line_endings_parse_like_lf() -> None:
    crlf = parse_sql(WIDGETS.replace("\n", "\r\n"), "sql/widgets.sql")
    assert crlf == parse_sql(WIDGETS, "sql/widgets.sql")


def test_comments_before_the_first_header_are_allowed() -> None:
    (query,) = parse_sql("-- file doc\n\n-- more\n-- name: get_widget :one\nSELECT 1", "w.sql")
    assert query.line == 4


# -- strict failures --------------------------------------------------------------------------

OK = "-- name: get_widget :one\nSELECT 1;\n\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("-- name: get_widget\nSELECT 1;\n", 1, "malformed header"),
        ("--name: get_widget :one extra\nSELECT 1;\n", 1, "malformed header"),
        ("-- name:get_widget :one\nSELECT 1;\n", 1, "malformed header"),
        ("-- name get_widget :one\nSELECT 1;\n", 1, "malformed header"),
        (OK + "-- name list_widgets :many\nSELECT 2;\n", 4, "malformed header"),
        # Without the colon check, this header would silently join get_widget's body.
        (
            "-- name: get_widget :one\nSELECT 1\n\n-- name list_widgets :many\nSELECT 2",
            4,
            "malformed",
        ),
        (OK + "-- NAME: list_widgets :many\nSELECT 1;\n", 4, "malformed header"),
        (OK + "-- name: list_widgets :first\nSELECT 1;\n", 4, "unknown cardinality :first"),
        ("-- name: get_widget :ONE\nSELECT 1;\n", 1, "unknown cardinality :ONE"),
        ("-- name: getuser :one\nSELECT 1;\n", 1, "'getuser' is not verb_noun"),
        ("-- name: GetUser :one\nSELECT 1;\n", 1, "'GetUser' is not verb_noun"),
        ("-- name: get-user :one\nSELECT 1;\n", 1, "'get-user' is not verb_noun"),
        ("-- name: get_user_ :one\nSELECT 1;\n", 1, "'get_user_' is not verb_noun"),
        (OK + "-- name: get_widget :many\nSELECT 2;\n", 4, "duplicate query name get_widget"),
        ("-- doc\nSELECT 1;\n-- name: get_widget :one\nSELECT 1;\n", 2, "SQL before the first"),
        ("-- name: get_widget :one\n-- name: list_widgets :many\nSELECT 1;\n", 1, "no SQL"),
        (OK + "-- name: list_widgets :many\n", 4, "list_widgets has no SQL"),
        (OK + "-- name: list_widgets :many\n-- only a doc\n\n", 4, "list_widgets has no SQL"),
        (OK + "-- name: list_widgets :many\n;\n", 4, "list_widgets has no SQL"),
        (OK + "-- name: list_widgets :many\n/* TODO */\n", 4, "list_widgets has no SQL"),
        (OK + "-- name: list_widgets :many\nSELECT 1;\nSELECT 2;\n", 5, "more than one"),
        (OK + "-- name: list_widgets :many\nSELECT 1,\n  'abc\n\n", 6, "unterminated string"),
        (OK + "-- name: list_widgets :many\n-- d\n\nSELECT\n $1\n", 8, "positional parameters"),
        (OK + "-- name: list_widgets :many\n-- d\nSELECT\n $1\n", 7, "positional parameters"),
        (OK + "-- name: list_widgets :many\nSELECT $1\n", 5, "positional parameters"),
        (OK + "-- name: list_widgets :many\nSELECT 1\nFROM t;\n/* open\n", 7, "unterminated /*"),
    ],
)
def test_strict_failure_names_file_and_offending_line(text: str, line: int, message: str) -> None:
    error = load_error(text)
    assert error.path == Path("sql/widgets.sql")
    assert error.line == line
    assert str(error).startswith(f"sql/widgets.sql:{line}: ")
    assert message in str(error)


def test_duplicate_name_in_a_file_points_back_at_the_first() -> None:
    error = load_error(OK + "-- name: get_widget :many\nSELECT 2;\n")
    assert "first defined on line 1" in str(error)


def test_unknown_cardinality_lists_the_valid_ones() -> None:
    error = load_error("-- name: get_widget :first\nSELECT 1;\n")
    assert all(f":{c}" in str(error) for c in ("one", "many", "exec", "execrows", "scalar"))


def test_doc_line_that_starts_with_the_word_name_is_not_a_header() -> None:
    (query,) = parse_sql(
        "-- name: get_widget :one\n-- name of the widget, trimmed.\nSELECT 1", "w.sql"
    )
    assert query.doc == "name of the widget, trimmed."


def test_form_feed_inside_a_string_literal_is_kept() -> None:
    (query,) = parse_sql("-- name: get_widget :one\nSELECT 'a\fb';\n", "widgets.sql")
    assert query.positional_sql == "SELECT 'a\fb'"


# -- folders ----------------------------------------------------------------------------------


def test_load_sql_dir_indexes_every_sql_file_by_query_name(tmp_path: Path) -> None:
    (tmp_path / "widgets.sql").write_text(WIDGETS, encoding="utf-8")
    (tmp_path / "gadgets.sql").write_text("-- name: get_gadget :one\nSELECT 1;\n")
    (tmp_path / "notes.txt").write_text("not SQL at all")
    catalog = load_sql_dir(tmp_path)
    assert sorted(catalog) == ["get_gadget", "get_widget", "list_widgets"]
    assert catalog["get_gadget"].path == tmp_path / "gadgets.sql"
    assert catalog["get_widget"].aggregate == "widgets"


def test_duplicate_name_across_files_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "a_widgets.sql").write_text("-- doc\n-- name: get_widget :one\nSELECT 1;\n")
    (tmp_path / "b_widgets.sql").write_text("-- name: get_widget :one\nSELECT 2;\n")
    with pytest.raises(SQLLoadError, match="duplicate query name get_widget") as info:
        load_sql_dir(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'a_widgets.sql'}:2" in message
    assert message.startswith(f"{tmp_path / 'b_widgets.sql'}:1: ")


def test_merge_refuses_a_name_defined_in_two_groups() -> None:
    first = parse_sql("-- name: get_widget :one\nSELECT 1;\n", "one.sql")
    second = parse_sql("-- name: get_widget :one\nSELECT 2;\n", "two.sql")
    with pytest.raises(SQLLoadError, match=r"also at one\.sql:1") as info:
        merge([first, second])
    assert (info.value.path, info.value.line) == (Path("two.sql"), 1)


def test_missing_sql_dir_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SQLLoadError, match="SQL directory not found") as info:
        load_sql_dir(missing)
    assert info.value.path == missing
    assert str(missing) in str(info.value)


def test_defect_in_one_file_is_reported_with_that_files_path(tmp_path: Path) -> None:
    (tmp_path / "good.sql").write_text("-- name: get_widget :one\nSELECT 1;\n")
    (tmp_path / "bad.sql").write_text("-- name: list_widgets :many\nSELECT 'open\n")
    with pytest.raises(SQLLoadError, match="unterminated string") as info:
        load_sql_dir(tmp_path)
    assert (info.value.path, info.value.line) == (tmp_path / "bad.sql", 2)


def test_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "latin1.sql").write_bytes(
        "-- name: get_widget :one\nSELECT 'é';\n".encode("latin-1")
    )
    with pytest.raises(SQLLoadError, match="cannot read") as info:
        load_sql_dir(tmp_path)
    assert info.value.path == tmp_path / "latin1.sql"


# -- properties -------------------------------------------------------------------------------

CARDINALITIES = ("one", "many", "exec", "execrows", "scalar")
SEGMENT = st.text("abcxyz0189", min_size=1, max_size=6)
NAMES = st.builds(
    lambda first, rest: "_".join([first, *rest]),
    st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
    st.lists(SEGMENT, min_size=1, max_size=3),
)
VALID_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(NAMES, st.sampled_from(CARDINALITIES), st.integers(0, 2), st.integers(0, 2)),
        min_size=1,
        max_size=5,
        unique_by=lambda q: q[0],
    )
)
def test_any_valid_name_and_cardinality_round_trip(
    queries: list[tuple[str, str, int, int]],
) -> None:
    lines: list[str] = []
    expected: list[tuple[str, str, int]] = []
    for name, card, docs, blanks in queries:
        lines.append(f"-- name: {name} :{card}")
        expected.append((name, card, len(lines)))
        lines += [f"-- doc {i}" for i in range(docs)] + [""] * blanks
        lines += [f"SELECT :{name}_arg;", ""]
    parsed = parse_sql("\n".join(lines), "widgets.sql")
    assert [(q.name, q.cardinality, q.line) for q in parsed] == expected
    assert [q.params for q in parsed] == [(f"{name}_arg",) for name, *_ in queries]
    assert [q.doc for q in parsed] == [
        "\n".join(f"doc {i}" for i in range(docs)) for _, _, docs, _ in queries
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).filter(
        lambda name: not VALID_NAME.fullmatch(name)
    ),
    st.integers(0, 3),
)
def test_any_name_that_is_not_verb_noun_is_refused_at_its_header(name: str, before: int) -> None:
    valid = "".join(f"-- name: get_widget{i} :one\nSELECT 1;\n\n" for i in range(before))
    error = load_error(valid + f"-- name: {name} :one\nSELECT 1;\n")
    assert error.line == 3 * before + 1
    assert str(error).startswith(
        f"sql/widgets.sql:{error.line}: query name {name!r} is not verb_noun"
    )


def test_a_doc_line_without_a_space_after_the_dashes_keeps_its_first_letter() -> None:
    [query] = parse_sql("-- name: get_widget :one\n--Doc, tight.\nSELECT 1;\n", "sql/w.sql")
    assert query.doc == "Doc, tight."


def test_queries_are_grouped_by_the_file_they_came_from() -> None:
    users = parse_sql(
        "-- name: get_user :one\nSELECT 1;\n-- name: list_users :many\nSELECT 2;", "u.sql"
    )
    plans = parse_sql("-- name: get_plan :one\nSELECT 3;\n", "sql/plans.sql")
    groups = by_aggregate(merge([users, plans]))
    assert {k: [q.name for q in v] for k, v in groups.items()} == {
        "u": ["get_user", "list_users"],
        "plans": ["get_plan"],
    }
    assert by_aggregate({}) == {}


def test_a_query_knows_whether_it_writes_and_which_parameter_names_its_account() -> None:
    text = (
        "-- name: get_widget :one\nSELECT id FROM widgets WHERE account_id = :account_id;\n\n"
        "-- name: touch_widget :exec\nupdate widgets SET n = n + 1 WHERE id = :id;\n\n"
        "-- name: merge_widget :exec\n"
        "MERGE INTO widgets w USING x ON true WHEN MATCHED THEN DO NOTHING;\n\n"
        "-- name: list_inserted :many\nSELECT inserted_at FROM widgets;\n"
    )
    get, touch, merge_, listed = parse_sql(text, "sql/widgets.sql")
    assert (get.writes, touch.writes, merge_.writes, listed.writes) == (False, True, True, False)
    assert get.account_param == "account_id"
    (account,) = parse_sql(
        "-- name: get_account :one\nSELECT 1 WHERE :id > 0;\n", "sql/accounts.sql"
    )
    assert (account.writes, account.account_param) == (False, "id")
