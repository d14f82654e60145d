"""The training process the pipeline launches: `python -m sam3lite_pipeline.ops.train_entry --config FILE`,
alone or as every rank under torchrun.

Only global rank 0 opens Dagster Pipes: every rank inherits the Pipes environment, and each opened session
would write its own opened/closed messages into the one channel. Rank 0 forwards what a person follows in the
run's event log (log lines, one line per finished epoch, every validation, progress in tenths) and sends the
TrainResult as a custom message at the end; per-step lines go to stdout only (the step's captured logs), so a
long run does not flood the event log. Needs only the package and dagster-pipes, so the same entry runs in a
container under another Pipes client.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes

from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.events import ConsolePrinter, Event
from sam3lite_core.train.outcome import exit_code

STAT_LINE = ("AP", "AP50", "AP75", "AR100")


class PipesForwarder:
    """An `on_event` handler: everything to stdout as machine lines, the readable part to the Pipes log."""

    def __init__(self, pipes: PipesContext) -> None:
        self.pipes = pipes
        self.printer = ConsolePrinter(tty=False)
        self.tenth = -1  # last progress tenth forwarded
        self.epoch: dict[str, Any] | None = None  # last train metric of the running epoch

    def __call__(self, event: Event) -> None:
        self.printer(event)
        data = event.data
        if event.kind == "log":
            self.pipes.log.info(event.message)
        elif event.kind == "metric" and data.get("phase") == "train":
            if self.epoch is not None and data["epoch"] != self.epoch["epoch"]:
                self._epoch_done()
            self.epoch = data
        elif event.kind == "metric" and data.get("phase") == "val":
            self._epoch_done()
            stats = ", ".join(f"{k} {data[k]:.4f}" for k in STAT_LINE if k in data)
            best = " (best so far)" if data.get("best") else ""
            self.pipes.log.info(f"validation after epoch {data['epoch']}/{data['total_epochs']}: {stats}{best}")
        elif event.kind == "progress" and data.get("phase") == "train" and event.progress is not None:
            tenth = int(event.progress * 10)
            if tenth > self.tenth:
                self.tenth = tenth
                self.pipes.log.info(f"progress {event.progress:.0%}: {event.message}")
        elif event.kind == "result":
            self._epoch_done()

    def _epoch_done(self) -> None:
        if self.epoch is None:
            return
        e = self.epoch
        self.pipes.log.info(
            f"epoch {e['epoch']}/{e['total_epochs']} done at step {e['step']}: loss {e['loss_avg10']:.4f} "
            f"(mean of the last 10 logged), lr {e['lr']:.2e}, {e['images_per_s']:.1f} images/s"
        )
        self.epoch = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam3lite_pipeline.ops.train_entry")
    parser.add_argument("--config", required=True, help="resolved training config (YAML) written by the pipeline")
    args = parser.parse_args(argv)
    config = TrainConfig.from_yaml(args.config)

    from sam3lite_core.train.loop import train

    # torchrun sets RANK for every worker; a single process has none.
    if int(os.environ.get("RANK", "0")) != 0 or not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        result = train(config, ConsolePrinter(tty=False))
    else:
        with open_dagster_pipes() as pipes:
            result = train(config, PipesForwarder(pipes))
            pipes.report_custom_message({"train_result": result.model_dump(mode="json")})
    # Diverged or stopped training is a failed step (with its last lines), as it is a failed `sam3lite train`.
    return exit_code(result.stopped_reason)


if __name__ == "__main__":
    sys.exit(main())
