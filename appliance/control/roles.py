"""The two roles a node can hold (node_state `role`) and the two modes a connected registry
works in (node_state `mode`, a hierarchy's `mode`), in a module light enough for the
every-minute `system check-role` to import without the store."""

CLOUD, CONNECTED = "cloud", "connected"

# ReadWrite: clients pull and push, pushes replicate up; ReadOnly: clients only pull.
READ_WRITE, READ_ONLY = "ReadWrite", "ReadOnly"
MODES = (READ_WRITE, READ_ONLY)
