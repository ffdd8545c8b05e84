"""`domaintune ui`: a local web app over the runs folder (runs, live curves, new runs, compare).

The top layer beside the CLI: it uses the API and the run directories the CLI uses, and nothing
below imports it (pyproject.toml's import contract)."""
