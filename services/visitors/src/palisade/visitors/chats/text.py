"""What a message body and a search query may be, and the words a query is searched by.

Bodies are stored as given once trimmed (plaintext: they are what full-text search reads).
Queries are never handed to a full-text parser as written: only the words in them are kept
(runs of Unicode letters and digits), so quotes, `*`, `NEAR`, `OR`, `-`, `:`, `(`, `^`, `&`,
`|`, `!`, `'` and the like are separators, never syntax, on both backends.
"""

from __future__ import annotations

import re
import unicodedata

from palisade.visitors.chats.errors import BodyTooLong, InvalidBody, InvalidQuery

MAX_BODY_CHARS = 10_000
MAX_QUERY_CHARS = 200
# C0 and C1 controls (Unicode category Cc) other than tab, line feed and carriage return
# (CRLF is a newline too), and the surrogate range (a lone surrogate is not valid UTF-8).
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# A word: letters and digits in any script. Underscores separate, as they do in both
# backends' tokenizers (FTS5 unicode61, Postgres's default parser).
_WORD = re.compile(r"[^\W_]+")


def clean_body(raw: str) -> str:
    """The body to store: trimmed, 1..MAX_BODY_CHARS characters, printable text."""
    if _FORBIDDEN.search(raw):
        raise InvalidBody()
    body = raw.strip()
    if not body:
        raise InvalidBody()
    if len(body) > MAX_BODY_CHARS:
        raise BodyTooLong()
    return body


def query_words(raw: str) -> tuple[str, ...]:
    """The distinct words of a query, lower-cased, in the order given; InvalidQuery for an
    empty or too long query and for one that holds no word at all."""
    query = raw.strip()
    if not query or len(query) > MAX_QUERY_CHARS:
        raise InvalidQuery()
    # NFC first: a letter followed by a combining accent is one letter, not a word break.
    words = _WORD.findall(unicodedata.normalize("NFC", query).lower())
    unique = tuple(dict.fromkeys(words))
    if not unique:
        raise InvalidQuery()
    return unique


def fts5_query(words: tuple[str, ...]) -> str:
    """An FTS5 MATCH expression requiring every word: each one an FTS5 string (double-quoted;
    a word holds no quote), so `NEAR`, `OR`, `AND` and `NOT` are plain words too. The
    table's porter tokenizer stems the strings as it stems the bodies."""
    return " ".join(f'"{word}"' for word in words)


def tsquery_text(words: tuple[str, ...]) -> str:
    """Text for Postgres's plainto_tsquery: the words, space-separated (it ANDs their stems
    and knows no operators)."""
    return " ".join(words)
