"""The code of `scripts/bench`: a black-box benchmark of registries over HTTP on loopback. It
never imports the appliance; connected-registry is run as a command, as an operator runs it.

  cli         the command's flags
  harness     which workloads run, each against each server, the order alternating by run
  params      the workloads' sizes, full and --quick
  figures     what is measured (Metric), every run's values, medians and ratios
  servers     the registries under test: ours, distribution's docker-registry, our root
  commands    connected-registry's CLI run as a command, and commands measured by wait4
  images      the test data: large random blobs, small images, the large image of sync-copy
  client      the OCI push client (aiohttp): uploads and manifests
  wrk         wrk run to a request count, with its latencies
  workloads/  one module per workload: its figures and its run
  sync        what sync-copy and sync-idle share: a root and a docker-registry to copy from
  report      the tables (plain or Markdown), their notes and the per-run values
"""

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


class WorkloadError(Exception):
    """A workload failed against one server; the message says what was seen."""
