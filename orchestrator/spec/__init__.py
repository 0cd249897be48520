"""The spec: YAML job files (with line numbers) and `--set` overrides into typed specs, and the
grid of cells they describe. Pure data: no Ray, no files written."""
