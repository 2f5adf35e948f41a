"""palisade.visitors: website visitors with encrypted PII, and their chats."""
