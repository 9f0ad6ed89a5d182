"""Pure knowledge of the OCI distribution and image specs: no I/O, imports nothing of ours."""
