"""Hungarian and one-to-many matchers: hand-checkable cases, batch invariance, empty targets, and identical
assignments to upstream's BinaryHungarianMatcherV2 / BinaryOneToManyMatcher on random inputs."""

from __future__ import annotations

import pytest
import torch
import vendor_harness

from sam3lite_core.train.matcher import HungarianMatcher, Match
from sam3lite_core.train.o2m_matcher import OneToManyMatcher


def random_problem(seed: int, num_queries: int = 5, num_preds: int = 30, counts=(3, 0, 7, 1, 12)):
    """Random logits, predicted boxes near (and far from) random targets; padded targets as in the Batch."""
    gen = torch.Generator().manual_seed(seed)
    num_boxes = torch.tensor(counts[:num_queries])
    max_boxes = max(1, int(num_boxes.max()))
    target_boxes = torch.zeros(num_queries, max_boxes, 4)
    for q, count in enumerate(num_boxes.tolist()):
        centres = torch.rand(count, 2, generator=gen) * 0.6 + 0.2
        sizes = torch.rand(count, 2, generator=gen) * 0.3 + 0.05
        target_boxes[q, :count] = torch.cat([centres, sizes], dim=1)
    pred_boxes = torch.cat(
        [
            torch.rand(num_queries, num_preds, 2, generator=gen) * 0.8 + 0.1,
            torch.rand(num_queries, num_preds, 2, generator=gen) * 0.3 + 0.05,
        ],
        dim=-1,
    )
    # Half the predictions are jittered copies of a target, so the one-to-many matcher finds pairs too.
    for q, count in enumerate(num_boxes.tolist()):
        for p in range(0, num_preds, 2):
            if count:
                jitter = (torch.rand(4, generator=gen) - 0.5) * 0.04
                pred_boxes[q, p] = (target_boxes[q, p % count] + jitter).clamp(0.01, 0.99)
    pred_logits = torch.randn(num_queries, num_preds, 1, generator=gen) * 2
    return pred_logits, pred_boxes, target_boxes, num_boxes


def triples(match: Match) -> set[tuple[int, int, int]]:
    return set(zip(*(idx.tolist() for idx in match)))


def test_hand_checkable_case():
    # Prediction 2 sits on target 0, prediction 0 on target 1; prediction 1 is far from both.
    targets = torch.tensor([[[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]]])
    preds = torch.tensor([[[0.75, 0.75, 0.2, 0.2], [0.5, 0.1, 0.05, 0.05], [0.25, 0.25, 0.2, 0.2]]])
    logits = torch.zeros(1, 3, 1)
    match = HungarianMatcher()(logits, preds, targets, torch.tensor([2]))
    assert triples(match) == {(0, 2, 0), (0, 0, 1)}


def test_queries_without_targets_are_skipped():
    logits, preds, targets, num_boxes = random_problem(0)
    match = HungarianMatcher()(logits, preds, targets, num_boxes)
    assert 1 not in match.query_idx.tolist()
    for q, count in enumerate(num_boxes.tolist()):
        pairs = match.query_idx == q
        assert pairs.sum() == count  # min(N, T) pairs, N = 30 >= T here
        assert sorted(match.target_idx[pairs].tolist()) == list(range(count))
        assert len(set(match.pred_idx[pairs].tolist())) == count  # one-to-one
    empty = HungarianMatcher()(logits, preds, targets, torch.zeros(5, dtype=torch.long))
    assert all(idx.numel() == 0 for idx in empty)


def test_batch_invariance():
    logits, preds, targets, num_boxes = random_problem(1)
    matcher = HungarianMatcher()
    together = triples(matcher(logits, preds, targets, num_boxes))
    alone = set()
    for q in range(len(num_boxes)):
        single = matcher(logits[q : q + 1], preds[q : q + 1], targets[q : q + 1], num_boxes[q : q + 1])
        alone |= {(q, p, t) for _, p, t in triples(single)}
    assert together == alone


def test_more_targets_than_predictions():
    logits, preds, targets, num_boxes = random_problem(2, num_preds=4)
    match = HungarianMatcher()(logits, preds, targets, num_boxes)
    for q, count in enumerate(num_boxes.tolist()):
        assert (match.query_idx == q).sum() == min(4, count)


def test_one_to_many_can_match_a_prediction_twice():
    # One prediction covering two identical targets matches both; the far prediction matches nothing.
    targets = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4]]])
    preds = torch.tensor([[[0.5, 0.5, 0.4, 0.4]] + [[0.1, 0.1, 0.05, 0.05]] * 7])
    logits = torch.full((1, 8, 1), 2.0)
    match = OneToManyMatcher(topk=1)(logits, preds, targets, torch.tensor([2]))
    assert triples(match) == {(0, 0, 0), (0, 0, 1)}


def vendor_targets(target_boxes: torch.Tensor, num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"boxes_padded": target_boxes, "num_boxes": num_boxes}


def vendor_triples(batch_idx, src_idx, tgt_idx, num_boxes) -> set[tuple[int, int, int]]:
    """Upstream returns packed target indices, or None when each query's pairs come in target order."""
    if tgt_idx is None:
        local = torch.cat([torch.arange(n) for n in num_boxes.tolist() if n > 0])
    else:
        offsets = torch.cumsum(num_boxes, 0) - num_boxes
        local = tgt_idx - offsets[batch_idx]
    return set(zip(batch_idx.tolist(), src_idx.tolist(), local.tolist()))


@pytest.mark.parametrize("seed,num_preds", [(3, 30), (4, 30), (5, 200), (6, 4)])
def test_hungarian_equals_vendor(vendor, seed, num_preds):
    theirs = vendor_harness.vendor_class("sam3.train.matcher", "BinaryHungarianMatcherV2")(
        focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2, stable=False
    )
    logits, preds, targets, num_boxes = random_problem(seed, num_preds=num_preds)
    expected = vendor_triples(
        *theirs({"pred_logits": logits, "pred_boxes": preds}, vendor_targets(targets, num_boxes)), num_boxes
    )
    assert triples(HungarianMatcher()(logits, preds, targets, num_boxes)) == expected


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_one_to_many_equals_vendor(vendor, seed):
    theirs = vendor_harness.vendor_class("sam3.train.matcher", "BinaryOneToManyMatcher")(
        alpha=0.3, threshold=0.4, topk=4
    )
    logits, preds, targets, num_boxes = random_problem(seed)
    expected = vendor_triples(
        *theirs({"pred_logits": logits, "pred_boxes": preds}, vendor_targets(targets, num_boxes)), num_boxes
    )
    ours = triples(OneToManyMatcher()(logits, preds, targets, num_boxes))
    assert len(ours) > 10
    assert ours == expected
