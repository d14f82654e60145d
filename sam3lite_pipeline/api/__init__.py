"""The annotation backend's training-job, dataset and run-storage routes over the Dagster pipeline, and
`sam3lite up` (`up.py`), which serves them beside the core inference service with a Dagster webserver and daemon."""
