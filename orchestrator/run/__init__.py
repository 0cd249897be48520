"""The run: which cells still need running (plan), Ray workers that run them (dispatch), the
Parquet store their rows go to (store), run manifests and progress, and one submit end to end."""
