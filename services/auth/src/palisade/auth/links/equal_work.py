"""Statements that cost a round trip and write nothing, for requests that must not reveal
whether an account exists.

A request for an unknown (or disabled, or throttled) email must send the database what a
real one sends, or the count of round trips becomes a timing oracle. Where the real request
INSERTs a row (the token, the queued email), the other one runs `INSERT INTO <table> (<the
same columns>) SELECT <the same values> WHERE false`: the same table, columns and bound
values, one round trip, and no row (so no constraint, foreign key or trigger is involved).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Table, false, insert, literal, select

from palisade.auth.store import AuthTransaction


async def insert_nothing(tx: AuthTransaction, table: Table, row: Mapping[str, object]) -> None:
    """The INSERT of `row` into `table`, selecting no row: nothing is written."""
    columns = list(row)
    values = select(*(literal(row[name], table.c[name].type) for name in columns)).where(false())
    await tx.conn.execute(insert(table).from_select(columns, values))
