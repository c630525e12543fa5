"""Outputs: the terminal tables, the JSON document, reports (md, html), Perfetto, write-back SQLite,
Parquet, dataset statistics and diffs. Each command module registers its commands with the CLI."""
