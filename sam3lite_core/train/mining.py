"""Hard-example mining (off by default): after a burn-in, part of every epoch replays the highest-loss images.

Each image's loss is the training loss of the batch it was in (exact with train_batch_size 1, shared by the
batch's images otherwise), averaged over its appearances in an epoch. At each epoch end the tables of all
ranks are summed, and an image's score becomes its latest epoch average. From epoch `burn_in` on, the last
`fraction` of each rank's sample list is replaced by the highest-scoring images (the ranks take disjoint
strided shares of one global ranking), so the epoch length does not change.
"""

from __future__ import annotations

from typing import Any

import torch

from sam3lite_core.distributed import all_reduce


class HardExampleMiner:
    def __init__(self, num_images: int, fraction: float = 0.25, burn_in: int = 1, enabled: bool = True) -> None:
        self.enabled = enabled
        self.fraction = fraction
        self.burn_in = burn_in
        self.scores = torch.full((num_images,), float("nan"), dtype=torch.float64)  # NaN: never seen
        self._sum = torch.zeros(num_images, dtype=torch.float64)
        self._count = torch.zeros(num_images, dtype=torch.float64)

    def record(self, indices: list[int], loss: float) -> None:
        """The loss of a batch made of the dataset images `indices`."""
        if self.enabled:
            index = torch.tensor(indices, dtype=torch.long)
            self._sum.index_add_(0, index, torch.full((len(indices),), float(loss), dtype=torch.float64))
            self._count.index_add_(0, index, torch.ones(len(indices), dtype=torch.float64))

    def end_epoch(self) -> None:
        """Merge this epoch's losses from every rank into the scores (a collective: call it on all ranks)."""
        if not self.enabled:
            return
        totals = all_reduce(torch.stack([self._sum, self._count]))
        seen = totals[1] > 0
        self.scores[seen] = totals[0][seen] / totals[1][seen]
        self._sum.zero_()
        self._count.zero_()

    def plan(self, epoch: int, indices: list[int], rank: int = 0, world_size: int = 1) -> list[int]:
        """This rank's sample list for `epoch`: `indices`, with its tail replaced by hard examples once mining
        has started."""
        known = int((~self.scores.isnan()).sum())
        replay = int(len(indices) * self.fraction)
        if not self.enabled or epoch < self.burn_in or replay == 0 or known == 0:
            return indices
        ranking = torch.argsort(torch.nan_to_num(self.scores, nan=-float("inf")), descending=True, stable=True)
        hardest = ranking[: min(known, replay * world_size)][rank::world_size].tolist()
        hardest = (hardest * (replay // max(len(hardest), 1) + 1))[:replay]  # few known images: repeat them
        return indices[: len(indices) - replay] + hardest

    def state_dict(self) -> dict[str, Any]:
        """Scores and this epoch's sums over all ranks (a collective when mining: call it on all ranks)."""
        partial = torch.stack([self._sum, self._count])
        if self.enabled:
            partial = all_reduce(partial.clone())
        return {"scores": self.scores.clone(), "sum": partial[0], "count": partial[1]}

    def load_state_dict(self, state: dict[str, Any], rank: int = 0) -> None:
        """Rank 0 takes the saved sums of the running epoch, the others start from zero, so the epoch-end
        all-reduce counts every loss once."""
        self.scores.copy_(state["scores"])
        self._sum.copy_(state["sum"] if rank == 0 else torch.zeros_like(self._sum))
        self._count.copy_(state["count"] if rank == 0 else torch.zeros_like(self._count))
