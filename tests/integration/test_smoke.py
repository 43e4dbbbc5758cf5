from datalayer import Database, UnitOfWork


def test_rolled_back_fixture_sees_migrated_schema(uow: UnitOfWork) -> None:
    account = uow.accounts.create(name="Acme")
    assert uow.accounts.get(account_id=account.id) == account


def test_fresh_database_commits(db: Database) -> None:
    with db.unit_of_work() as uow:
        account = uow.accounts.create(name="Acme")
    assert db.accounts.get(account_id=account.id) == account
