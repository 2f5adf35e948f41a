"""Reading the log: people's queries (with authenticated page tokens) and the event stream."""
