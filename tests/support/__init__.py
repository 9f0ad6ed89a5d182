"""What the tests share, imported as `support.<module>` (pytest puts tests/ on sys.path):

- `server`: `connected-registry serve` in a child process (`RegistryProcess`), `free_port`.
- `cli`: the real command in a child process (`run`), with a clean environment (`clean_env`).
- `oci`: build images and indexes, push them over HTTP.
- `registry`: OCI error-body assertions and small /v2 steps (uploads, tags, links).
- `auth`: servers with auth on, tokens, the token endpoint, JWTs, refusal checks.
- `hierarchy`: a root registry with devices activated under it (`Root`, the `root` fixtures).
- `sync`: Debian's `docker-registry` as a plain upstream, `sync` in a child process.
- `crash`: a registry's consistency checked the way a client sees it after a crash.
- `oci_layout`: OCI image layouts on disk, for skopeo.
"""
