"""Training: matching, losses, optimiser groups and the learning-rate schedule.

Import the submodules you need (`sam3lite_core.train.losses`, `.optim`, `.schedule`); this package imports
nothing eagerly, so `python -m sam3lite_core.train` and light callers stay cheap.
"""
