"""The registry's HTTP face: the OCI distribution API over `Store`, one module per resource."""
