"""One module per schema revision, each with a docstring saying why it was made."""
