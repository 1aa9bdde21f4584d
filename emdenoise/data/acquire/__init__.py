"""Acquire raw data: sources, the HTTP/S3 client, zip extraction, the manifest and the download engine."""
