"""Built-in actions.  Each module holds one action type."""
