"""Launch and follow retrains on a Dagster webserver over GraphQL: `client.TriggerClient` for a backend's Python
code, `cli` for `sam3lite trigger`, `documents` for the GraphQL queries they send."""
