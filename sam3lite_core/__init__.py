"""sam3lite core: the box-only SAM3 detector in plain PyTorch, its data, evaluation, inference, training and serving.

It imports neither dagster, dagster_pipes nor the upstream `sam3` package. Like every package of the project it
exports nothing: import a name from the module that defines it (docs/architecture.md lists the public ones).
"""
