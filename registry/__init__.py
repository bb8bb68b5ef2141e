"""The registry of record: holders, methodologies, projects, issuance into serial blocks, transfer,
retirement, cancellation and the hash-chained audit log. Imports nothing else of ours."""
