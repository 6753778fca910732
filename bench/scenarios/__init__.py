"""One module per benchmark scenario; each has C{run(ctx) -> dict}."""
