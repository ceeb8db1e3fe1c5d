"""A user's own model package: nothing in it knows about hpo."""
