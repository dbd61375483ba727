"""Binance trade collector: WebSocket -> JSONL spool -> gzip -> S3 with a manifest per object."""
