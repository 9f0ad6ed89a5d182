"""The two roles a node can hold (node_state `role`), in a module light enough for the
every-minute `system check-role` to import without the store."""

CLOUD, CONNECTED = "cloud", "connected"
