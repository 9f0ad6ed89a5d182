"""The one write path: blobs on disk, metadata in SQLite, resumable uploads.

Everything that changes content — a client's push, a sync, a delete — goes through `Store`.
Imports only `appliance.oci`.
"""
