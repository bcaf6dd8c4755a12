"""The command-line commands, one module per area; :mod:`flows.cli` registers them."""
