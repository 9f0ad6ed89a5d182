"""connected-registry: an OCI registry appliance for edge sites."""

__version__ = "0.1.0"
