"""Training: `loop.train(config, on_event) -> TrainResult` over the parts built in `components.py` (matching,
losses, optimiser groups, schedule, checkpoints, run folder). `python -m sam3lite_core.train` is the torchrun target.
"""
