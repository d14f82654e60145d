"""`python -m sam3lite_pipeline.demo` (`make demo`): the main job on the embedded synthetic dataset, end to end."""
