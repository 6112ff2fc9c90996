"""The ``jobline`` command line (typer + rich): the top layer, calling flows and the store."""
