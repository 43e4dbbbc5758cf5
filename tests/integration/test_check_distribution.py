"""``datalayer check-distribution``: every rule fires on an object made to break it and stays
quiet on a schema that would distribute; on the project's schema it lists what issue 16 must
redesign, each with the file and line that defines it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import pg_url

from datalayer._cli import main
from datalayer._ops.distribution import check_distribution
from datalayer.repositories import REPOSITORIES

CLEAN = """
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE plans (id bigint PRIMARY KEY, code text NOT NULL UNIQUE);
CREATE TABLE notes (
    account_id bigint NOT NULL REFERENCES accounts (id),
    id bigint NOT NULL,
    plan_id bigint REFERENCES plans (id),
    body text NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE TABLE replies (
    account_id bigint NOT NULL,
    id bigint NOT NULL,
    note_id bigint NOT NULL,
    PRIMARY KEY (account_id, id),
    FOREIGN KEY (account_id, note_id) REFERENCES notes (account_id, id)
);
"""


@pytest.fixture
def toy(fresh_dbname: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose schema is a small one that would distribute."""
    with psycopg.connect(pg_url(fresh_dbname), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA toy")
        conn.execute("SET search_path = toy")
        conn.execute(CLEAN)
        yield conn


def problems(conn: psycopg.Connection[Any]) -> list[str]:
    return [f"{f.subject}: {f.problem}" for f in check_distribution(conn, ())]


def test_a_schema_that_would_distribute_gives_no_finding(toy: psycopg.Connection[Any]) -> None:
    # plans is not one of the reference tables by name here, so it is local; a local
    # table referenced *by* a distributed one is not what Citus refuses.
    assert problems(toy) == []


def test_a_global_lookup_is_a_reference_table_that_tenant_rows_may_reference(
    toy: psycopg.Connection[Any],
) -> None:
    """Keyed without account_id yet naming one: user_emails is laid out as a reference table."""
    toy.execute(
        "CREATE TABLE user_emails (email text PRIMARY KEY, account_id bigint NOT NULL,"
        " UNIQUE (email, account_id));"
        " ALTER TABLE notes ADD COLUMN email text,"
        " ADD FOREIGN KEY (email, account_id) REFERENCES user_emails (email, account_id)"
    )
    assert problems(toy) == []
    toy.execute(
        "ALTER TABLE user_emails ADD CONSTRAINT user_emails_account_fkey"
        " FOREIGN KEY (account_id) REFERENCES accounts (id)"
    )
    assert problems(toy) == [
        "user_emails.user_emails_account_fkey: foreign key from a reference table to the"
        " distributed accounts"
    ]


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        ("CREATE TABLE tags (account_id bigint NOT NULL, id bigint PRIMARY KEY)",
         "tags.tags_pkey: primary key (id) lacks account_id"),
        ("ALTER TABLE notes ADD CONSTRAINT notes_body_key UNIQUE (body)",
         "notes.notes_body_key: unique constraint (body) lacks account_id"),
        ("CREATE UNIQUE INDEX notes_lower_body_key ON notes (lower(body))",
         "notes.notes_lower_body_key: unique index (lower(body)) lacks account_id"),
        ("CREATE TABLE seq (account_id bigint NOT NULL, id int GENERATED ALWAYS AS IDENTITY,"
         " PRIMARY KEY (account_id, id))",
         "seq.id: identity column that is not bigint"),
        ("CREATE FUNCTION nop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';"
         " CREATE TRIGGER notes_nop BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION nop()",
         "notes.notes_nop: trigger on a distributed table"),
        ("CREATE TABLE links (account_id bigint NOT NULL, id bigint NOT NULL, other bigint,"
         " PRIMARY KEY (account_id, id), FOREIGN KEY (other) REFERENCES accounts (id))",
         "links.links_other_fkey: foreign key to accounts without account_id -> id"),
        ("CREATE TABLE audit (id bigint PRIMARY KEY, account_ref bigint REFERENCES accounts (id))",
         "audit.audit_account_ref_fkey: foreign key from a local table to the distributed"),
    ],
)  # fmt: skip
def test_each_rule_finds_what_breaks_it(
    toy: psycopg.Connection[Any], ddl: str, expected: str
) -> None:
    toy.execute(ddl)  # type: ignore[arg-type]
    found = problems(toy)
    assert len(found) == 1, found
    assert found[0].startswith(expected)


def test_the_projects_schema_lists_what_the_citus_redesign_must_change(
    shared_dbname: str,
) -> None:
    with psycopg.connect(pg_url(shared_dbname), autocommit=True) as conn:
        findings = check_distribution(conn, REPOSITORIES)
    by_subject = {f.subject: f for f in findings}
    # the global lookups hold on a cluster (0019_global_lookups): reference tables keyed
    # by email and by hash, referenced by users and api_keys
    assert not [f for f in findings if "email" in f.subject or "secret_hash" in f.subject]
    assert not [f for f in findings if f.subject.startswith(("user_emails.", "api_key_hashes."))]
    # the defects issue 16 names, each where it is defined
    assert "invoices.id" not in by_subject  # a bigint identity distributes
    # migration 0021: the price book is sealed by foreign keys, not triggers
    assert not [s for s in by_subject if s.startswith("plan")], sorted(by_subject)
    # migration 0018: the rollup queues are keyed by account and filled by statements
    assert not [s for s in by_subject if "rollup" in s], sorted(by_subject)
    claims = {f.subject for f in findings if "across accounts" in f.problem}
    assert claims == {
        "files.claim_files", "subscriptions.renew_due_subscriptions",
        "billing.claim_closed_periods", "billing.claim_drafts",
    }  # fmt: skip
    assert by_subject["files.claim_files"].where == "sql/files.sql:100"
    hot = by_subject["billing.finalize_invoice"]
    assert "invoice_number_counters" in hot.problem
    # tenant-scoped queries are not reported
    assert "accounts.get_account" not in by_subject
    assert "accounts.update_account" not in by_subject  # accounts is pinned by its id
    assert "quotas.settle_quota_reservation" not in by_subject  # joined to a pinned CTE


def test_the_command_exits_one_while_anything_would_not_distribute(
    shared_dbname: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", pg_url(shared_dbname), "check-distribution"]) == 1
    out = capsys.readouterr().out
    assert "sql/files.sql:100: files.claim_files: locks rows of files across accounts" in out
    assert "would not distribute by account (" in out.rstrip().splitlines()[-1]
