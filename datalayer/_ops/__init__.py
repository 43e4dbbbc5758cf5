"""Operations the CLI runs (migrate, partitions, rollups, archive, backup, export, check-sql,
demo, seed); ``import datalayer`` never loads them."""
