"""The `maglev` command line (installed as the package ``maglev_cli``)."""
