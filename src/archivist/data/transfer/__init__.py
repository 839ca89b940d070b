"""Copies made by the daemon: ``data/copy`` copies a collection's next rows from one handle
to another without decoding them, and ``data/delete`` with ``matching`` deletes source rows
only where the other handle holds an identical row, compared by the database column by
column.

Two SQLite files (the destination attached to the source) and two MariaDB/MySQL databases
on one server reached with the same credentials are reached by one connection: rows never
leave the database (`attached`). Two PostgreSQL databases are not, so rows pass from one to
the other as binary ``COPY`` data through the daemon, never decoded, and each server
computes a digest of its rows' text for the compare (`piped_pg`). Between two servers or two
engines the daemon reads the rows from one connection and writes them into the other with
that engine's bulk path, and the delete compares a digest of the batch each side computes
over the rows' canonical text (`streamed`, `canonical`). Only to or from an in-memory SQLite
database do both commands answer ``unsupported``, and the worker moves the rows itself:
list, create, verify, delete.

`commands` holds the two commands (`Transfers`); `link` finds how two handles are reached;
`pages` reads which rows a copy takes next; `keys` names pages of integer keys as ranges.
"""
