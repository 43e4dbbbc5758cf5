"""Per-account export: every row of one tenant, checked against a manifest, nobody else's."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pytest

from datalayer import Database, DataLayerError, NotFound
from datalayer._ops.export import export_account, read_export_manifest


def test_an_export_holds_every_row_of_the_account_and_no_other(
    db: Database, fresh_url: str, tmp_path: Path
) -> None:
    mine = db.accounts.create_with_owner(name="Mine", owner_email="me@mine.test")
    theirs = db.accounts.create_with_owner(name="Theirs", owner_email="them@theirs.test")
    for account in (mine.account, theirs.account):
        db.users.create(account_id=account.id, email=f"x{account.id}@x.test",
                        display_name="line one\nline two, \"quoted\"")  # fmt: skip
        db.files.register(account_id=account.id, storage_key="k", file_name="f.pdf",
                          content_type="application/pdf")  # fmt: skip
    result = export_account(fresh_url, mine.account.id, tmp_path / "mine.tar.gz")
    assert result.rows["accounts"] == 1
    assert result.rows["users"] == 2
    assert result.rows["files"] == 1
    manifest = read_export_manifest(result.path)
    assert manifest["account_id"] == mine.account.id
    assert manifest["tables"]["users"]["rows"] == 2
    with tarfile.open(result.path) as tar:
        member = tar.extractfile("users.csv")
        assert member is not None
        users = list(csv.DictReader(io.StringIO(member.read().decode())))
    assert {u["account_id"] for u in users} == {str(mine.account.id)}
    assert "line one\nline two" in users[1]["display_name"]


def test_a_tampered_export_is_detected_and_a_missing_account_refused(
    db: Database, fresh_url: str, tmp_path: Path
) -> None:
    account = db.accounts.create(name="Solo")
    good = export_account(fresh_url, account.id, tmp_path / "a.tar.gz").path
    with pytest.raises(DataLayerError, match="exists"):
        export_account(fresh_url, account.id, good)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            assert data is not None
            body = data.read()
            if member.name == "accounts.csv":
                body = body.replace(b"Solo", b"Evil")
            member.size = len(body)
            dst.addfile(member, io.BytesIO(body))
    with pytest.raises(DataLayerError, match=r"accounts\.csv does not match"):
        read_export_manifest(bad)
    with pytest.raises(NotFound):
        export_account(fresh_url, 2**40, tmp_path / "none.tar.gz")
