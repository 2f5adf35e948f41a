"""The team member list of a workspace."""
