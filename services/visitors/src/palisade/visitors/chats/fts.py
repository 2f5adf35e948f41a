"""Full-text search over message bodies, one statement per backend.

Postgres: the stored `body_tsv` (english configuration) matched with plainto_tsquery, which
knows no operators, over the query's extracted words; ranked by ts_rank_cd (cover density:
repeated and nearby matches count) with length normalisation 1, so a word in a short message
counts for more than in a long one, as bm25 has it (plain ts_rank ignores length). SQLite: the
FTS5 table `messages_fts` (porter unicode61) matched with every word quoted as an FTS5 string;
ranked by bm25 (lower is better). Both order equal scores newest first (storage order). One
difference shows: Postgres's english configuration drops stop words ("the", "or", "not"), so a
query of stop words alone finds nothing there, while FTS5 matches them as words.

Paging is by keyset: the cursor is the storage sequence number of the last message shown, and
the next page holds what sorts after that message's score and sequence number, its score being
computed again in the same statement. On Postgres a message's ts_rank_cd depends on it and the
query only, so pages of a query never overlap or leave a gap. bm25 also weighs how common each
word is in the whole table, so on SQLite (the embedded single-node default) scores drift a
little as messages are written: the order within one statement is always consistent, but a
message written between two page requests can move a neighbour across a page boundary.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import TextClause, text
from sqlalchemy.sql.selectable import TextualSelect

from palisade.visitors.chats.tables import messages
from palisade.visitors.chats.text import fts5_query, tsquery_text
from palisade.visitors.model import Scope

_COLUMNS = (
    messages.c.id,
    messages.c.chat_id,
    messages.c.body,
    messages.c.sender,
    messages.c.created_at,
    messages.c.position,
    messages.c.seq,
)


class SearchStatements(Protocol):
    def page(
        self, scope: Scope, words: tuple[str, ...], after_seq: int | None, limit: int
    ) -> tuple[TextualSelect, dict[str, Any]]:
        """The statement for one page of matches and its parameters."""


def _typed(statement: TextClause) -> TextualSelect:
    return statement.columns(*_COLUMNS)


class PostgresSearch:
    # Written out whole (no SQL built from strings): only bound parameters vary.
    _FIRST = _typed(
        text(
            "WITH q AS (SELECT plainto_tsquery('english', :query) AS query) "
            "SELECT m.id, m.chat_id, m.body, m.sender, m.created_at, m.position, m.seq "
            "FROM messages m, q "
            "WHERE m.body_tsv @@ q.query AND m.workspace_id = :workspace_id AND m.test = :test "
            "ORDER BY ts_rank_cd(m.body_tsv, q.query, 1) DESC, m.seq DESC LIMIT :limit"
        )
    )
    # What follows (score, seq) in that order: a lower score, or the same and a lower seq.
    _NEXT = _typed(
        text(
            "WITH q AS (SELECT plainto_tsquery('english', :query) AS query) "
            "SELECT m.id, m.chat_id, m.body, m.sender, m.created_at, m.position, m.seq "
            "FROM messages m, q "
            "WHERE m.body_tsv @@ q.query AND m.workspace_id = :workspace_id AND m.test = :test "
            "AND (ts_rank_cd(m.body_tsv, q.query, 1), m.seq) < ("
            "SELECT ts_rank_cd(c.body_tsv, q.query, 1), c.seq FROM messages c "
            "WHERE c.seq = :after_seq AND c.workspace_id = :workspace_id) "
            "ORDER BY ts_rank_cd(m.body_tsv, q.query, 1) DESC, m.seq DESC LIMIT :limit"
        )
    )

    def page(
        self, scope: Scope, words: tuple[str, ...], after_seq: int | None, limit: int
    ) -> tuple[TextualSelect, dict[str, Any]]:
        params: dict[str, Any] = {
            "query": tsquery_text(words),
            "workspace_id": scope.workspace_id,
            "test": scope.test,
            "limit": limit,
        }
        if after_seq is None:
            return self._FIRST, params
        return self._NEXT, {**params, "after_seq": after_seq}


class SqliteSearch:
    _FIRST = _typed(
        text(
            "WITH hits AS (SELECT rowid AS seq, bm25(messages_fts) AS score FROM messages_fts "
            "WHERE messages_fts MATCH :query) "
            "SELECT m.id, m.chat_id, m.body, m.sender, m.created_at, m.position, m.seq "
            "FROM hits JOIN messages m ON m.seq = hits.seq "
            "WHERE m.workspace_id = :workspace_id AND m.test = :test "
            "ORDER BY hits.score, m.seq DESC LIMIT :limit"
        )
    )
    # bm25 ascending, then newest first: what follows (score, seq) has a higher score, or the
    # same and a lower seq.
    _NEXT = _typed(
        text(
            "WITH hits AS (SELECT rowid AS seq, bm25(messages_fts) AS score FROM messages_fts "
            "WHERE messages_fts MATCH :query) "
            "SELECT m.id, m.chat_id, m.body, m.sender, m.created_at, m.position, m.seq "
            "FROM hits JOIN messages m ON m.seq = hits.seq "
            "WHERE m.workspace_id = :workspace_id AND m.test = :test "
            "AND (hits.score, -m.seq) > ("
            "SELECT bm25(messages_fts), -messages_fts.rowid FROM messages_fts "
            "WHERE messages_fts MATCH :query AND messages_fts.rowid = :after_seq) "
            "ORDER BY hits.score, m.seq DESC LIMIT :limit"
        )
    )

    def page(
        self, scope: Scope, words: tuple[str, ...], after_seq: int | None, limit: int
    ) -> tuple[TextualSelect, dict[str, Any]]:
        params: dict[str, Any] = {
            "query": fts5_query(words),
            "workspace_id": scope.workspace_id,
            "test": scope.test,
            "limit": limit,
        }
        if after_seq is None:
            return self._FIRST, params
        return self._NEXT, {**params, "after_seq": after_seq}


def search_statements(dialect: str) -> SearchStatements:
    if dialect == "postgresql":
        return PostgresSearch()
    if dialect == "sqlite":
        return SqliteSearch()
    raise ValueError(f"no full-text search for the {dialect} dialect")
