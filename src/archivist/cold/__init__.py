"""The cold tier's operations on an archive: `query` it with DuckDB, `restore` rows from it
into their source, and `retention` (expiring archived rows for good).

Each works on the archive as a kind (`archives`): an SQL table today, the seam where other
kinds (an Iceberg table) plug in.
"""
