"""The label-fidelity measure: its definition on hand-made cases and the `fidelity` run."""
import json

import torch

from medmix_ops.fidelity import evidence_labels, mismatch, run_fidelity


def test_evidence_label_definition():
    L = torch.zeros(3, 1, 4, 4)
    L[:, :, :2, :2] = 1  # a's lesion: top-left
    Lb = torch.zeros(3, 1, 4, 4)
    Lb[:, :, 2:, 2:] = 1  # b's lesion: bottom-right
    w = torch.ones(3, 1, 4, 4)
    w[1, :, 2:, :] = 0  # sample 1: bottom half from b -> both lesions fully visible
    w[2] = 0            # sample 2: all of b
    e, va, vb = evidence_labels(w, L, Lb, torch.tensor([1, 1, 1]), torch.tensor([3, 3, 3]))
    assert torch.allclose(va, torch.tensor([1.0, 1.0, 0.0])) and torch.allclose(vb, torch.tensor([0.0, 1.0, 1.0]))
    assert torch.allclose(e[0], torch.tensor([0, 1.0, 0, 0]))
    assert torch.allclose(e[1], torch.tensor([0, 0.5, 0, 0.5]))
    assert torch.allclose(e[2], torch.tensor([0, 0, 0, 1.0]))
    # a partly visible lesion and a normal partner: the rest of the evidence is "normal"
    w2 = torch.ones(1, 1, 4, 4)
    w2[..., :1, :] = 0
    e2, va2, _ = evidence_labels(w2, L[:1], torch.zeros(1, 1, 4, 4), torch.tensor([2]), torch.tensor([0]))
    assert torch.allclose(va2, torch.tensor([0.5])) and torch.allclose(e2, torch.tensor([[0.5, 0, 0.5, 0]]))
    assert torch.allclose(mismatch(torch.tensor([[0, 1.0, 0, 0]]), e[1:2]), torch.tensor([0.5]))


def test_run_fidelity_reports_every_policy(tmp_path):
    result = run_fidelity(n=48, size=32, batch=16, progress=False)
    names = set(result["policies"])
    assert names == {"mixup", "cutmix", "saliencymix", "spmix", "varimix_oracle", "meddiffusemix", "genmix"}
    for r in result["policies"].values():
        assert 0 <= r["label_mismatch"] <= 1 and r["samples"] >= 48
    # Mixup blends globally, so its label always equals the visible evidence
    assert result["policies"]["mixup"]["label_mismatch"] < 1e-6
    # CutMix pastes boxes whatever the lesions: its label misses part of the evidence
    assert result["policies"]["cutmix"]["label_mismatch"] > 0.05
    json.dumps(result)
