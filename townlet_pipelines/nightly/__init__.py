"""One night of the nightly anneal as plain functions: what the Dagster assets and the benchmarks both run."""
