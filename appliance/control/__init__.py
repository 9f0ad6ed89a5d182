"""The hierarchy: connected-registry resources and their rules, activation, connection strings,
the gateway API (parent side) and its client (child side)."""
