"""Chats with a workspace's visitors: plaintext messages, full-text searchable (Postgres
tsvector + GIN, SQLite FTS5), paged with signed tokens; ChatsService of the visitors API."""
