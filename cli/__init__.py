"""``genq``: the command line for genq's HTTP API (batches, jobs, circuits)."""
