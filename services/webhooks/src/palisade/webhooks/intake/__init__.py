"""The intake: audit's event stream fanned out into deliveries, resumable from its cursor."""
