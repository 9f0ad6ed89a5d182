"""Client access: tokens, scope maps, password hashing, bearer tokens and access decisions."""
