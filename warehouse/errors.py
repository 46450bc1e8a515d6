"""User-facing warehouse errors: one sentence saying what, where, and what to do."""


class WarehouseError(ValueError):
    """A problem the user can fix (bad input file, missing warehouse, refused SQL)."""
