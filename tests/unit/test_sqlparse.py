"""The query-body lexer: ``:name`` parameters outside literals and comments, ``%`` escaping."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer

from datalayer._loader import load_sql_dir
from datalayer._resources import sql_dir
from datalayer._sqlparse import Lexed, LexError, has_code, lex


def psycopg_positional(psycopg_sql: str, params: Mapping[str, object]) -> tuple[str, list[bytes]]:
    """What psycopg itself sends to the server for ``psycopg_sql``: ``$n`` text and values."""
    query = PostgresQuery(Transformer())
    query.convert(psycopg_sql, params)
    values = [bytes(v) for v in query.params or () if v is not None]
    return query.query.decode(), values


_PSYCOPG_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")


def undo(psycopg_sql: str) -> str:
    """psycopg's form back into what was written: ``%(name)s`` -> ``:name``, ``%%`` -> ``%``."""
    return _PSYCOPG_PLACEHOLDER.sub(
        lambda m: "%" if m.group(1) is None else f":{m.group(1)}", psycopg_sql
    )


# -- comments ---------------------------------------------------------------------------------


def test_colon_and_percent_in_line_comment_are_not_parameters() -> None:
    lexed = lex("SELECT 1 -- costs :x or 5%\nFROM t WHERE a = :a")
    assert lexed == Lexed(
        psycopg_sql="SELECT 1 -- costs :x or 5%%\nFROM t WHERE a = %(a)s",
        positional_sql="SELECT 1 -- costs :x or 5%\nFROM t WHERE a = $1",
        params=("a",),
    )


def test_line_comment_ends_at_newline_so_next_line_params_count() -> None:
    assert lex("SELECT -- :hidden\n:shown").params == ("shown",)


def test_nested_block_comment_hides_colons_and_percent_until_outermost_close() -> None:
    lexed = lex("SELECT /* outer /* inner :x 5% */ still :y % */ :z")
    assert lexed.params == ("z",)
    assert lexed.psycopg_sql == "SELECT /* outer /* inner :x 5%% */ still :y %% */ %(z)s"
    assert lexed.positional_sql == "SELECT /* outer /* inner :x 5% */ still :y % */ $1"


# -- string literals --------------------------------------------------------------------------


def test_doubled_quote_in_string_does_not_end_it() -> None:
    lexed = lex("SELECT 'it''s :x at 100%', :y")
    assert lexed.params == ("y",)
    assert lexed.psycopg_sql == "SELECT 'it''s :x at 100%%', %(y)s"
    assert lexed.positional_sql == "SELECT 'it''s :x at 100%', $1"


@pytest.mark.parametrize("prefix", ["E", "e"])
def test_backslash_quote_in_escape_string_does_not_end_it(prefix: str) -> None:
    lexed = lex(f"SELECT {prefix}'it\\'s :x', :y")
    assert lexed.params == ("y",)
    assert lexed.positional_sql == f"SELECT {prefix}'it\\'s :x', $1"


def test_escaped_backslash_before_closing_quote_ends_escape_string() -> None:
    assert lex("SELECT E'a\\\\', :y").params == ("y",)


def test_backslash_in_standard_string_is_literal_so_quote_ends_it() -> None:
    # standard_conforming_strings: 'a\' is a complete literal.
    assert lex("SELECT 'a\\', :y").params == ("y",)


def test_e_at_end_of_a_word_does_not_make_an_escape_string() -> None:
    # LIKE'\' is LIKE followed by the standard string '\'.
    lexed = lex("SELECT a LIKE'\\' OR b = :y")
    assert lexed.params == ("y",)


def test_colon_name_inside_string_is_text_not_parameter() -> None:
    lexed = lex("SELECT ':name' AS label")
    assert lexed.params == ()
    assert lexed.psycopg_sql == "SELECT ':name' AS label"


def test_percent_in_like_pattern_is_doubled_for_psycopg() -> None:
    lexed = lex("SELECT id FROM t WHERE name LIKE 'a%' AND owner = :owner")
    assert lexed.psycopg_sql == "SELECT id FROM t WHERE name LIKE 'a%%' AND owner = %(owner)s"
    assert lexed.positional_sql == "SELECT id FROM t WHERE name LIKE 'a%' AND owner = $1"


def test_psycopg_placeholder_written_inside_a_string_stays_literal_text() -> None:
    lexed = lex("SELECT '%(x)s', :y")
    assert lexed.params == ("y",)
    assert psycopg_positional(lexed.psycopg_sql, {"y": "v"})[0] == "SELECT '%(x)s', $1"


def test_modulo_operator_is_doubled_for_psycopg() -> None:
    lexed = lex("SELECT :a % 7")
    assert lexed.psycopg_sql == "SELECT %(a)s %% 7"
    assert lexed.positional_sql == "SELECT $1 % 7"


# -- identifiers and dollar quotes ------------------------------------------------------------


def test_colon_and_percent_in_quoted_identifier_are_not_parameters() -> None:
    lexed = lex('SELECT "a:b", "50%", "say ""hi"" :x" FROM t WHERE c = :c')
    assert lexed.params == ("c",)
    assert lexed.psycopg_sql == 'SELECT "a:b", "50%%", "say ""hi"" :x" FROM t WHERE c = %(c)s'


def test_dollar_quote_hides_colons_quotes_and_percent() -> None:
    lexed = lex("SELECT $$ :x ' 5% $$, :y")
    assert lexed.params == ("y",)
    assert lexed.psycopg_sql == "SELECT $$ :x ' 5%% $$, %(y)s"
    assert lexed.positional_sql == "SELECT $$ :x ' 5% $$, $1"


def test_tagged_dollar_quote_ends_only_at_its_own_tag() -> None:
    lexed = lex("SELECT $fn$ has $$ and :x and $other$ $fn$, :y")
    assert lexed.params == ("y",)


def test_dollar_inside_identifier_is_neither_quote_nor_positional_parameter() -> None:
    lexed = lex("SELECT col$1, a$b$ FROM t WHERE x = :x")
    assert lexed.params == ("x",)
    assert lexed.positional_sql == "SELECT col$1, a$b$ FROM t WHERE x = $1"


def test_dollar_quote_tag_with_non_bmp_character_hides_parameters() -> None:
    assert lex("SELECT $😀$ :x $😀$").params == ()


# -- casts, slices, parameters ----------------------------------------------------------------


def test_parameter_followed_by_cast_is_parameter_then_cast() -> None:
    lexed = lex("SELECT :id::bigint, '1'::int, x::text")
    assert lexed.params == ("id",)
    assert lexed.psycopg_sql == "SELECT %(id)s::bigint, '1'::int, x::text"
    assert lexed.positional_sql == "SELECT $1::bigint, '1'::int, x::text"


def test_array_slice_bound_after_a_digit_is_not_a_parameter() -> None:
    lexed = lex("SELECT arr[1:n], arr[i:j] FROM t")
    assert lexed.params == ()
    assert lexed.psycopg_sql == "SELECT arr[1:n], arr[i:j] FROM t"


def test_array_subscript_parameter_after_bracket_is_a_parameter() -> None:
    assert lex("SELECT arr[:n]").positional_sql == "SELECT arr[$1]"


def test_repeated_parameter_maps_to_the_same_positional_number() -> None:
    lexed = lex("SELECT 1 WHERE a = :x OR b = :y OR c = :x")
    assert lexed.params == ("x", "y")
    assert lexed.positional_sql == "SELECT 1 WHERE a = $1 OR b = $2 OR c = $1"
    assert lexed.psycopg_sql == "SELECT 1 WHERE a = %(x)s OR b = %(y)s OR c = %(x)s"


def test_parameters_are_listed_in_order_of_first_appearance() -> None:
    lexed = lex("SELECT :b, :a, :c, :a, :b")
    assert lexed.params == ("b", "a", "c")
    assert lexed.positional_sql == "SELECT $1, $2, $3, $2, $1"


def test_query_without_parameters_has_empty_params() -> None:
    assert lex("SELECT now()") == Lexed("SELECT now()", "SELECT now()", ())


# -- statements -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["SELECT 1;", "SELECT 1;\n  \n", "SELECT 1 ;"])
def test_trailing_semicolon_and_whitespace_are_dropped(body: str) -> None:
    assert lex(body) == Lexed("SELECT 1", "SELECT 1", ())


def test_comment_after_final_semicolon_is_allowed_and_its_percent_escaped() -> None:
    lexed = lex("SELECT :a; -- done, 100%")
    assert lexed.params == ("a",)
    assert ";" not in lexed.positional_sql
    # psycopg would refuse a lone '%' even in a comment; it must read back our $n form.
    assert psycopg_positional(lexed.psycopg_sql, {"a": "v"})[0] == lexed.positional_sql


def test_semicolon_inside_string_does_not_end_the_statement() -> None:
    assert lex("SELECT ';', :x").params == ("x",)


@pytest.mark.parametrize(
    "body",
    ["SELECT 1; SELECT 2", "SELECT 1;\n-- c\nDELETE FROM t", "SELECT 1;;", "SELECT 1; /**/ x"],
)
def test_second_statement_is_refused_at_the_semicolon(body: str) -> None:
    with pytest.raises(LexError, match="more than one statement") as info:
        lex(body)
    assert info.value.offset == body.index(";")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("SELECT 'abc", "unterminated string literal"),
        ("SELECT 'it''s", "unterminated string literal"),
        ("SELECT E'abc\\'", "unterminated string literal"),
        ('SELECT "abc', "unterminated quoted identifier"),
        ("SELECT /* abc", "unterminated /\\* comment"),
        ("SELECT /* /* abc */", "unterminated /\\* comment"),
        ("SELECT $$ abc", "unterminated dollar quote"),
        ("SELECT $x$ abc $y$", "unterminated dollar quote"),
    ],
)
def test_unterminated_construct_is_refused_at_its_start(body: str, message: str) -> None:
    with pytest.raises(LexError, match=message) as info:
        lex(body)
    # E'...' starts at the quote; everything else at the character after "SELECT ".
    assert info.value.offset == (8 if body.startswith("SELECT E'") else 7)


@pytest.mark.parametrize("body", ["SELECT $1", "SELECT * FROM t WHERE a = $12", "SELECT ($1)"])
def test_positional_parameters_are_refused(body: str) -> None:
    with pytest.raises(LexError, match="positional parameters") as info:
        lex(body)
    assert info.value.offset == body.index("$")


def test_unterminated_comment_after_final_semicolon_reports_its_own_offset() -> None:
    body = "SELECT 1;\n/* never closed"
    with pytest.raises(LexError, match="unterminated") as info:
        lex(body)
    assert info.value.offset == body.index("/*")


# -- edge cases, each its own example -----------------------------------------------------


def test_a_body_ending_in_a_line_comment_without_a_newline_keeps_the_comment_to_the_end() -> None:
    lexed = lex("SELECT :a -- the end, 5% :b")
    assert lexed == Lexed(
        psycopg_sql="SELECT %(a)s -- the end, 5%% :b",
        positional_sql="SELECT $1 -- the end, 5% :b",
        params=("a",),
    )
    assert lex("SELECT 1 --") == Lexed("SELECT 1 --", "SELECT 1 --", ())


def test_a_backslash_in_a_quoted_identifier_is_an_ordinary_character() -> None:
    # Only E'...' strings know backslash escapes: "a\" is a complete identifier.
    lexed = lex('SELECT "a\\" FROM t WHERE b = :b')
    assert lexed.params == ("b",)
    assert lexed.positional_sql == 'SELECT "a\\" FROM t WHERE b = $1'


def test_a_lone_dollar_sign_is_plain_text() -> None:
    assert lex("SELECT a $ :b, $") == Lexed("SELECT a $ %(b)s, $", "SELECT a $ $1, $", ("b",))


def test_slash_star_slash_opens_a_comment_that_its_own_slash_does_not_close() -> None:
    lexed = lex("SELECT /*/ :x */ :y")
    assert lexed.params == ("y",)
    assert lexed.positional_sql == "SELECT /*/ :x */ $1"
    with pytest.raises(LexError, match=r"unterminated /\* comment") as info:
        lex("SELECT /*/ :x")
    assert info.value.offset == 7


def test_a_parameter_right_after_a_comment_or_a_literal_is_a_parameter() -> None:
    assert lex("SELECT /**/:a, /* /* */ */:b").params == ("a", "b")
    assert lex("SELECT '':a, \"c\":c").params == ("a", "c")
    assert lex("SELECT -- x\n:a").positional_sql == "SELECT -- x\n$1"


def test_an_unterminated_literal_ending_in_a_doubled_quote_is_refused_at_its_opening_quote() -> (
    None
):
    # The final '' is an escaped quote, not the end: nothing closes the literal.
    for body in ["SELECT 'abc''", "SELECT '''''''", "SELECT '''"]:
        with pytest.raises(LexError, match="unterminated string literal") as info:
            lex(body)
        assert info.value.offset == 7, body
    assert lex("SELECT ''''").params == ()  # a literal holding one quote


def test_parameters_after_a_binary_minus_are_parameters() -> None:
    assert lex("SELECT :limit - :used").params == ("limit", "used")
    assert lex("SELECT 5-:used, -:a").positional_sql == "SELECT 5-$1, -$2"
    assert lex("SELECT c.reserved - r.quantity, used = c.used + :used").params == ("used",)


def test_the_quota_settlement_in_sql_quotas_takes_its_used_parameter() -> None:
    # sql/quotas.sql: "SET reserved = c.reserved - r.quantity, used = c.used + :used"
    query = load_sql_dir(sql_dir())["settle_quota_reservation"]
    assert query.params == ("status", "account_id", "id", "used")


def test_a_dollar_quote_must_close_with_its_own_tag() -> None:
    assert lex("SELECT $a$ :x $b$ :y $a$, :z").params == ("z",)
    with pytest.raises(LexError, match=r"unterminated dollar quote \$a\$") as info:
        lex("SELECT :z, $a$ :x $b$")
    assert info.value.offset == 11


def test_e_starts_an_escape_string_only_as_a_word_of_its_own() -> None:
    # "xE" is one word, so '\' after it is a complete standard string.
    assert lex("SELECT xE'\\', :y").params == ("y",)
    # At the start of the body, or after "(", E'\'' is an escape string holding a quote.
    assert lex("E'\\'', :y").params == ("y",)
    assert lex("SELECT (E'\\'', :y)").params == ("y",)
    # At the very start, or second, the character before the quote decides alone.
    assert lex("'a\\', :y, e").params == ("y",)
    assert lex("xE'\\', :y").params == ("y",)


def test_a_colon_after_an_identifier_character_or_another_colon_is_not_a_parameter() -> None:
    assert lex("SELECT a:b, 1:c, $:d, _:e, é:f").params == ()
    assert lex("SELECT ::g").params == ()
    assert lex("SELECT :::h").positional_sql == "SELECT :::h"
    assert lex(":a").params == ("a",)
    assert lex("x:a").params == ()
    assert lex("SELECT x: :b").params == ("b",)
    assert lex("SELECT :1, : a").params == ()


def test_comments_after_the_final_semicolon_are_kept_and_code_is_refused() -> None:
    body = "SELECT 1; -- one\n/* two */ SELECT 2"
    with pytest.raises(LexError, match="more than one statement") as info:
        lex(body)
    assert info.value.offset == 8
    assert lex("SELECT 1; -- one\n/* two */\n").positional_sql == "SELECT 1 -- one\n/* two */"
    assert lex("SELECT 1; --").positional_sql == "SELECT 1 --"


@pytest.mark.parametrize(
    ("text", "code"),
    [("", False), (" \n\t", False), ("-- a", False), ("-- a\n/* b /* c */ */\n", False),
     ("-- a\nx", True), ("/* b */x", True), ("x", True), ("-x", True), ("/x", True)],
)  # fmt: skip
def test_has_code_sees_anything_but_whitespace_and_comments(text: str, code: bool) -> None:
    assert has_code(text) is code


# -- properties -------------------------------------------------------------------------------

PARAM_NAMES = ("a", "b", "id", "user_id", "_x1")
SPECIAL = list(":%'\"$\\-/*;")
ORDINARY = list("()[] \n\tEe1é😀")


def text(*, exclude: str = "", min_size: int = 0) -> st.SearchStrategy[str]:
    """Short text rich in characters that matter to the lexer, plus any other character."""
    alphabet = st.one_of(
        st.sampled_from([c for c in SPECIAL if c not in exclude]),
        st.sampled_from([c for c in ORDINARY if c not in exclude]),
        st.characters(codec="utf-8", exclude_characters="\x00" + exclude),
    )
    return st.text(alphabet, min_size=min_size, max_size=12)


Fragment = tuple[str, tuple[str, ...]]

WORDS = st.sampled_from(
    [
        "SELECT",
        "FROM",
        "t",
        "x1",
        "42",
        "=",
        "(",
        ")",
        ",",
        "||",
        "%",
        "100%",
        "arr[1:2]",
        "arr[i:n]",
        "x::int",
        "E",
        "-",
        "/",
        "*",
    ]
).map(lambda w: (w, ()))

PARAMS = st.tuples(st.sampled_from(PARAM_NAMES), st.sampled_from(["", "::bigint", "::text[]"])).map(
    lambda p: (f":{p[0]}{p[1]}", (p[0],))
)

LINE_COMMENTS = text(exclude="\n").map(lambda t: (f"--{t}\n", ()))


@st.composite
def block_comments(draw: st.DrawFn) -> Fragment:
    inner = text(exclude="*/")
    nested = draw(st.one_of(st.just(""), inner.map(lambda t: f"/*{t}*/")))
    return f"/*{draw(inner)}{nested}{draw(inner)}*/", ()


def text_with(char: str) -> st.SearchStrategy[str]:
    """Text that often holds ``char`` (the one its literal must escape)."""
    return st.lists(text(), min_size=1, max_size=3).map(char.join)


STRINGS = text_with("'").map(lambda t: ("'" + t.replace("'", "''") + "'", ()))

ESCAPE_STRINGS = st.tuples(st.sampled_from("Ee"), text_with("'"), text_with("\\")).map(
    lambda p: (
        p[0] + "'" + (p[1] + p[2]).replace("\\", "\\\\").replace("'", "\\'") + "'",
        (),
    )
)

IDENTIFIERS = text_with('"').filter(bool).map(lambda t: ('"' + t.replace('"', '""') + '"', ()))

DOLLAR_QUOTES = st.tuples(st.sampled_from(["", "fn", "a_1", "é", "😀"]), text(exclude="$")).map(
    lambda p: (f"${p[0]}${p[1]}${p[0]}$", ())
)

FRAGMENTS = st.one_of(
    WORDS,
    PARAMS,
    LINE_COMMENTS,
    block_comments(),
    STRINGS,
    ESCAPE_STRINGS,
    IDENTIFIERS,
    DOLLAR_QUOTES,
)
SEPARATORS = st.sampled_from([" ", "\n", "  ", "\t", " \n "])


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """A statement without top-level ';' and the parameters the generator put in it."""
    fragments = draw(st.lists(FRAGMENTS, min_size=1, max_size=8))
    parts: list[str] = []
    params: list[str] = []
    for index, (fragment, names) in enumerate(fragments):
        if index:
            parts.append(draw(SEPARATORS))
        parts.append(fragment)
        params.extend(name for name in names if name not in params)
    return "".join(parts), tuple(params)


TRAILERS = st.sampled_from(["", ";", " ;", ";\n", "\n", ";  \n\t"])


@settings(max_examples=200, deadline=None)
@given(statements(), TRAILERS)
def test_lexing_finds_the_inserted_params_in_order_and_loses_no_text(
    statement: tuple[str, tuple[str, ...]], trailer: str
) -> None:
    body, params = statement
    lexed = lex(body + trailer)
    # (a) exactly the generator's parameters, in order of first appearance;
    assert lexed.params == params
    # (b) %(name)s -> :name and %% -> % gives back the input minus the trailing ';'.
    assert undo(lexed.psycopg_sql) == body.rstrip()


@settings(max_examples=200, deadline=None)
@given(statements(), TRAILERS)
def test_psycopg_converts_our_psycopg_form_into_exactly_our_positional_form(
    statement: tuple[str, tuple[str, ...]], trailer: str
) -> None:
    body, _ = statement
    lexed = lex(body + trailer)
    values = {name: f"value of {name}" for name in lexed.params}
    query, sent = psycopg_positional(lexed.psycopg_sql, values)
    assert query == lexed.positional_sql
    # $n receives the value of the n-th listed parameter, as check-sql assumes.
    assert sent == [values[name].encode() for name in lexed.params]


@settings(max_examples=100, deadline=None)
@given(statements(), SEPARATORS, FRAGMENTS)
def test_any_second_statement_is_refused_at_the_separating_semicolon(
    first: tuple[str, tuple[str, ...]], sep: str, second: Fragment
) -> None:
    # " SELECT" guarantees code after the ';' even when `second` is a comment.
    body = f"{first[0]};{sep}{second[0]} SELECT"
    with pytest.raises(LexError, match="more than one statement") as info:
        lex(body)
    assert info.value.offset == len(first[0])


@settings(max_examples=100, deadline=None)
@given(statements(), text(exclude="'"))
def test_unclosed_string_at_the_end_is_refused_at_its_quote(
    statement: tuple[str, tuple[str, ...]], tail: str
) -> None:
    body = f"{statement[0]} '{tail}"
    with pytest.raises(LexError, match="unterminated string literal") as info:
        lex(body)
    assert info.value.offset == len(statement[0]) + 1
