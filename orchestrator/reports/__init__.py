"""The reports: everything that reads rows back (summaries, pivots, queries with `--where`,
run comparisons, plots, output formats). Never runs cells."""
