"""The Hugging Face hub as the pipeline sees it: ids resolved to commits in a local cache, and
snapshots laid into that cache (replicas for tests and benches)."""
