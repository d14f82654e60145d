"""sam3lite's Dagster code location: thin assets over the plain functions in `sam3lite_core` and `ops/`."""
