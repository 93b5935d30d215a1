"""The shared EdNet encoder's inductive biases (docs/method.md#encoders-h_m): the joint
interaction memory, forgetting by steps and hours, Rasch difficulty; and the loader's clock."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from dsrsd_cli.config import DSRSDConfig, ModelConfig
from dsrsd_cli.data.ednet_row_arrays import hours_since_first
from dsrsd_cli.model import build_model
from dsrsd_cli.model.encoders import build_core, build_encoders
from dsrsd_cli.model.interaction_core import QUERY_GRAIN
from model_fakes import ednet_batch, ednet_spec

SPEC = ednet_spec()
SMALL = {"d_model": 16, "n_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest


def _loud(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3).requires_grad_(False)
    return module.eval()


def _earlier_content_changed(batch):
    """A copy of `batch` whose content inputs of row 0's first two bundles differ."""
    changed = copy.deepcopy(batch)
    early = (batch.context["bundle_group"][0] <= 2) & batch.valid[0]
    changed.inputs["content"]["part"][0, early] = changed.inputs["content"]["part"][0, early] % 7 + 1
    return changed, early


@pytest.mark.parametrize("joint", [True, False])
def test_each_modality_reads_the_joint_history_only_with_joint_memory(joint):
    torch.manual_seed(0)
    encoders = _loud(build_encoders(SPEC, SPEC.modalities, ModelConfig(**SMALL, joint_memory=joint)))
    batch = ednet_batch(SPEC, batch_size=3, seed=1)
    changed, early = _earlier_content_changed(batch)
    later = batch.valid[0] & (batch.context["bundle_group"][0] > 2)
    moved = (encoders(changed)["item"].h[0] - encoders(batch)["item"].h[0]).abs()[later].max()
    # item's encoding sees content's history iff the memory is joint (and never its own step's content)
    assert (float(moved) > 1e-4) == joint
    assert float((encoders(changed)["content"].h[0] - encoders(batch)["content"].h[0]).abs()[later].max()) > 1e-4


@pytest.mark.parametrize("name", ["dsrsd", "concat", "late", "coattn", "early"])
def test_an_absent_modality_leaves_the_joint_memory(name):
    """Where behaviour is absent, its raw inputs reach nothing: the memory holds its absent token."""
    torch.manual_seed(0)
    model = _loud(build_model(SPEC, ModelConfig(name=name, **SMALL), DSRSDConfig(k_shared=8)))
    batch = ednet_batch(SPEC, batch_size=3, seed=2)
    absent = batch.valid & ~batch.present["behavior"]
    absent[0, 3:9] = True                                                        # and some more, mid-window
    batch.present["behavior"] = batch.valid & ~absent
    noisy = copy.deepcopy(batch)
    noisy.inputs["behavior"]["num"][absent] = 7.0
    noisy.inputs["behavior"]["num_present"][absent] = True
    noisy.inputs["behavior"]["platform"][absent] = 2
    assert torch.allclose(model(noisy).logits, model(batch).logits, atol=1e-6)
    # ... while a present step's behaviour does reach later steps (so the test can fail)
    present = batch.present["behavior"].clone()
    present[0, :9] = False
    moved = copy.deepcopy(batch)
    moved.inputs["behavior"]["platform"][present] = (moved.inputs["behavior"]["platform"][present] + 1) % 3
    assert float((model(moved).logits - model(batch).logits).abs().max()) > 1e-4


def test_forgetting_grows_with_steps_and_hours_and_spares_the_start_slot():
    torch.manual_seed(0)
    core = build_core(SPEC, ModelConfig(**SMALL), stacks=3)
    group = torch.tensor([[1, 1, 2, 3, 3, 4]])
    hours = torch.tensor([[0.0, 0.0, 1.0, 30.0, 30.0, 200.0]])
    with torch.no_grad():
        for rates in (core.decay, core.decay_time):
            for r in rates:
                r.fill_(0.0)                                                    # softplus(0) = ln 2 for every head
        everything = torch.ones(1, 6, 7, dtype=torch.bool)                      # (B, T, 1+T) all visible
        steps_only, both = -core._bias(everything, group, None), -core._bias(everything, group, hours)   # the falls
        hidden = everything.clone()
        hidden[0, 2, 4] = False
        masked = core._bias(hidden, group, hours)
    assert steps_only.shape == (1, 3 * 2, 6, 7)
    assert bool(torch.isneginf(masked[0, :, 2, 4]).all()) and int(torch.isinf(masked).sum()) == 3 * 2   # every head
    assert float(both[..., 0].abs().max()) == 0.0                               # the start slot never decays
    last = both[0, 0, 5, 1:]                                                    # query: the last step
    assert bool((last[:-1].diff() <= 1e-6).all()) and float(last[0]) > float(last[3]) > 0   # older keys fall further
    assert bool((both >= steps_only).all()) and float((both - steps_only).max()) > 0       # hours add to steps
    assert torch.allclose(steps_only[0, 0, 5, 1], torch.log1p(torch.tensor(3.0)) * np.log(2))


@pytest.mark.parametrize("joint", [True, False])
def test_the_core_encodes_only_the_needed_steps_and_gives_them_what_encoding_all_gives(joint):
    """Evaluation encodes the scored steps alone (interaction_core._query_groups): exactly the
    values of the full pass there, zeros elsewhere, for any pattern of needed steps."""
    torch.manual_seed(0)
    encoders = _loud(build_encoders(SPEC, SPEC.modalities, ModelConfig(**SMALL, n_layers=2, joint_memory=joint)))
    batch = ednet_batch(SPEC, batch_size=6, seed=4)
    T = batch.valid.shape[1]
    needed = torch.zeros_like(batch.valid)
    assert bool(batch.valid[0].all())
    needed[0, 11:] = True                              # a context window's scored tail (span [10, 16))
    needed[1] = True                                   # every step (padding included)
    needed[2, [1, T - 2]] = True                       # two steps far apart
    needed[3, 3] = True                                # one step; row 4: none
    needed[5] = batch.valid[5]
    full = torch.stack([e.h for e in encoders(batch).values()])                     # (M, B, T, d)
    some = torch.stack([e.h for e in encoders(batch, needed=needed).values()])
    assert torch.allclose(some[:, needed], full[:, needed], atol=1e-6)
    skipped = ~needed
    skipped[:, :QUERY_GRAIN] &= ~needed[:, :QUERY_GRAIN].any(1, keepdim=True)       # spans of whole grains are encoded
    skipped[:, QUERY_GRAIN:] &= ~needed[:, QUERY_GRAIN:].any(1, keepdim=True)       # (T = 16: two grains)
    assert int(skipped.sum()) > T and float(some[:, skipped].abs().max()) == 0.0
    assert float(full[:, skipped].abs().max()) > 0.0   # (so the zeros are the skipping's)


@pytest.mark.parametrize("name", ["dsrsd", "concat", "late", "coattn", "early", "single:item"])
def test_evaluation_scores_are_those_of_encoding_every_step(name, monkeypatch):
    """The models skip the unscored steps in evaluation only, and their scores do not move."""
    import dsrsd_cli.model.fusion as fusion

    torch.manual_seed(0)
    model = _loud(build_model(SPEC, ModelConfig(name=name, **SMALL), DSRSDConfig(k_shared=8)))
    batch = ednet_batch(SPEC, batch_size=4, seed=5)
    batch.mask[:2, :QUERY_GRAIN + 1] = False                                     # context steps: not scored
    seen = []
    real = fusion.needed_steps
    monkeypatch.setattr(fusion, "needed_steps", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    skipping = model(batch).logits
    assert seen and all(s is None for s in seen) == (name == "coattn")            # coattn reads every step
    monkeypatch.setattr(fusion, "needed_steps", lambda *a, **k: None)
    assert torch.allclose(skipping[batch.mask], model(batch).logits[batch.mask], atol=1e-6)
    assert real(batch, training=True, reads_every_step=False) is None            # training encodes every step


def test_rasch_difficulty_is_one_scalar_per_question_on_a_shared_direction():
    torch.manual_seed(0)
    encoders = build_encoders(SPEC, SPEC.modalities, ModelConfig(**SMALL))
    item = encoders.views["item"]
    assert item.difficulty.weight.shape == (SPEC.vocab["item.question"], 1)
    assert item.difficulty_direction.weight.shape == (SMALL["d_model"], 1)
    batch = ednet_batch(SPEC, batch_size=2, seed=3)
    before = item(batch).query
    q = int(batch.inputs["item"]["question"][0, 0])
    with torch.no_grad():
        item.difficulty.weight[q] += 1.0
    delta = item(batch).query - before                                          # moves exactly those steps, along the direction
    at_q = batch.inputs["item"]["question"] == q
    assert torch.allclose(delta[at_q], item.difficulty_direction.weight[:, 0].expand(int(at_q.sum()), -1), atol=1e-6)
    assert float(delta[~at_q].abs().max().detach()) == 0.0


def test_hours_since_first_per_learner_with_nulls():
    ms = pa.chunked_array([[1_000, None, 3_601_000, None, 7_200_000, 10_800_000, None]], pa.int64())
    users = np.array([0, 0, 0, 1, 1, 1, 2])
    hours = hours_since_first(ms, users)
    assert hours.dtype == np.float32
    np.testing.assert_allclose(hours, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0], atol=1e-6)
