"""The `sam3lite` code location (workspace.yaml): assembles assets, checks, jobs, sensors, schedules and
resources into `defs`, and nothing else. The asset graph arrives with the pipeline issue; until then the
location loads empty so the workspace, the webserver and `dagster job` commands work against it."""

import dagster as dg

defs = dg.Definitions()
