"""The operator's side of the data: completeness audit across the replicas, backfill of the holes from
Binance's REST trade history, and one deduplicated day per symbol. Runs with the operator's AWS
credentials (never the instances' role), and every day in the stack's daily job with its own role
(`audit.daily`): `python -m audit --help`."""
