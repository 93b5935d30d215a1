"""Every registered model on fake batches of both datasets: shapes, gradients, absent
modalities, DSRSD gates and auxiliary losses, and the EdNet leakage rules (docs/leakage.md)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsrsd_cli.config import DSRSDConfig, ModelConfig
from dsrsd_cli.data.schema import BEHAVIOR_FEATURES
from dsrsd_cli.errors import BadInput
from dsrsd_cli.model import build_model, model_names
from dsrsd_cli.model.blocks import dropout
from dsrsd_cli.model.encoders import View, bag_mean, build_core
from dsrsd_cli.model.fusion import drop_modalities
from dsrsd_cli.model.losses import AUX_LOSSES, task_loss
from model_fakes import ednet_batch, ednet_spec, oulad_batch, oulad_spec

SMALL = {"d_model": 16, "n_heads": 2}
SMALL_DSRSD = {"k_shared": 8}
SPECS = {"ednet": ednet_spec(), "oulad": oulad_spec(), "oulad-result4": oulad_spec(n_outputs=4)}
BATCHES = {"ednet": ednet_batch, "oulad": oulad_batch, "oulad-result4": oulad_batch}
ABLATION_NAMES = ["dsrsd:no-align", "dsrsd:no-decorr", "dsrsd:no-orth", "dsrsd:no-private", "dsrsd:no-shared", "dsrsd:mean-gate"]
# "<name>@joint": the model built with dsrsd.core = "joint" (EdNet only; model/dsrsd_joint.py).
JOINT = [f"{name}@joint" for name in ("dsrsd", *ABLATION_NAMES)]
CASES = [(data, name) for data, spec in SPECS.items() for name in model_names(spec, kind="neural")] + [("ednet", n) for n in JOINT]
EDNET_NAMES = model_names(SPECS["ednet"], kind="neural") + JOINT
# The auxiliary loss terms each DSRSD variant trains with (the rest of AUX_LOSSES is removed).
VARIANT_LOSSES = {
    "dsrsd": set(AUX_LOSSES),
    "dsrsd:no-align": {"decorrelation", "orthogonality"},
    "dsrsd:no-decorr": {"infonce", "regression", "orthogonality"},
    "dsrsd:no-orth": {"infonce", "regression", "decorrelation"},
    "dsrsd:no-private": set(AUX_LOSSES),
    "dsrsd:no-shared": {"orthogonality"},
    "dsrsd:mean-gate": set(AUX_LOSSES),
}
# The parameters of a removed mechanism, which therefore get no gradient at all. (Absent
# tokens always do: the joint memory carries them to every modality's encoding.) Under
# dsrsd.core = "joint" the same modules live in `decomposition.` instead of `fusion.`.
VARIANT_SILENT = {
    "dsrsd:no-align": ("fusion.predictors.",),
    "dsrsd:no-private": ("fusion.private.", "fusion.gate."),     # one open stream: the gate is constant
    "dsrsd:no-shared": ("fusion.align.", "fusion.predictors."),
    "dsrsd:mean-gate": ("fusion.gate.",),
}
VARIANT_SILENT |= {f"{n}@joint": tuple(p.replace("fusion.", "decomposition.") for p in prefixes)
                   for n, prefixes in VARIANT_SILENT.items()}
POST = [i for i, (_, kind) in enumerate(BEHAVIOR_FEATURES) if kind == "post"]

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest


def build(spec, name: str, *, dsrsd: dict | None = None, **model):
    """name may end in "@joint" (JOINT): then dsrsd.core = "joint"."""
    torch.manual_seed(0)
    name, _, core = name.partition("@")
    dsrsd = {**SMALL_DSRSD, **({"core": core} if core else {}), **(dsrsd or {})}
    return build_model(spec, ModelConfig(name=name, **{**SMALL, **model}), DSRSDConfig(**dsrsd))


def fake(data: str, **kwargs):
    return SPECS[data], BATCHES[data](SPECS[data], **kwargs)


def finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def test_model_names():
    assert model_names(SPECS["ednet"]) == ["dsrsd", *ABLATION_NAMES, "early", "late", "concat", "coattn",
                                           "single:item", "single:content", "single:behavior", "gbdt"]
    assert model_names(SPECS["oulad"]) == ["dsrsd", *ABLATION_NAMES, "early", "late", "concat", "coattn",
                                           "single:demographics", "single:clicks", "single:assessments", "gbdt"]
    assert model_names(SPECS["ednet"], kind="fitted") == ["gbdt"]
    assert "gbdt" not in model_names(SPECS["ednet"], kind="neural")


@pytest.mark.parametrize("name", ["transformer", "single:clicks", "single", "dsrsd:item"])
def test_unknown_model_is_bad_input_listing_valid_names(name):
    with pytest.raises(BadInput, match="choose one of dsrsd, dsrsd:no-align, .*, early, late, concat, coattn, single:item.*, gbdt"):
        build(SPECS["ednet"], name)


def test_check_model_is_the_one_answer_to_is_this_a_model():
    from dsrsd_cli.model.registry import check_model

    check_model(SPECS["ednet"], "dsrsd:no-orth")
    check_model(SPECS["ednet"], ["early", "gbdt"], where="--models")
    with pytest.raises(BadInput, match=r"^--models: 'nope', 'single:clicks' not registered for ednet; choose one of dsrsd, "):
        check_model(SPECS["ednet"], ["dsrsd", "nope", "single:clicks"], where="--models")
    with pytest.raises(BadInput, match=r"^model\.name 'nope' is not a registered model for oulad"):
        check_model(SPECS["oulad"], "nope")


def test_bad_sizes_are_bad_input():
    with pytest.raises(BadInput, match="divisible"):
        build(SPECS["ednet"], "dsrsd", d_model=18, n_heads=4)


@pytest.mark.parametrize("data,name", CASES)
def test_forward_backward_reaches_every_parameter(data, name):
    spec, batch = fake(data)
    model = build(spec, name, modality_dropout=0.0).train()
    out = model(batch)
    expected_shape = tuple(batch.valid.shape) + ((spec.n_outputs,) if spec.n_outputs > 1 else ())
    assert tuple(out.logits.shape) == expected_shape
    assert finite(out.logits)
    aux = out.aux["losses"]
    assert set(aux) == VARIANT_LOSSES.get(name.partition("@")[0], set())
    assert all(finite(v) and v.dim() == 0 for v in aux.values())

    loss = task_loss(out.logits, batch.target, batch.mask, spec.n_outputs) + sum(aux.values())
    loss.backward()
    silent = {n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)}
    removed = {n for n, _ in model.named_parameters() if n.startswith(VARIANT_SILENT.get(name, ("-",)))}
    assert silent == removed
    assert all(finite(p.grad) for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("data,name", CASES)
def test_absent_modalities_work_and_give_no_nan(data, name):
    spec, batch = fake(data)
    model = build(spec, name)
    for missing in [(m,) for m in spec.modalities] + [tuple(spec.modalities)]:   # each one, then all (explain's empty set)
        masked = batch.without(*missing)
        model.eval()
        out = model(masked)
        assert finite(out.logits), missing
        if name in ("dsrsd", "dsrsd@joint"):
            gates = out.aux["gates"]                                              # (N_scored, 1 + M)
            for m in missing:
                assert torch.equal(gates[:, 1 + spec.modalities.index(m)], torch.zeros(gates.shape[0]))
            assert torch.allclose(gates.sum(-1), torch.ones(gates.shape[0]))
        model.train()
        out = model(masked)
        loss = task_loss(out.logits, masked.target, masked.mask, spec.n_outputs) + sum(out.aux["losses"].values())
        loss.backward()
        assert finite(loss)
        assert all(finite(p.grad) for p in model.parameters() if p.grad is not None)
        model.zero_grad()


DSRSD_CASES = [("ednet", "dsrsd"), ("ednet", "dsrsd@joint"), ("oulad", "dsrsd")]


@pytest.mark.parametrize("data,name", DSRSD_CASES)
def test_dsrsd_gate_weights_of_absent_units_are_exactly_zero(data, name):
    spec, batch = fake(data)
    out = build(spec, name).eval()(batch)
    gates, scored = out.aux["gates"], batch.mask                                  # one gate row per scored unit
    assert out.aux["gate_names"] == ["consensus", *spec.modalities]
    for i, m in enumerate(spec.modalities):
        absent = ~batch.present[m][scored]
        assert bool(absent.any()) and bool((~absent).any())                       # the fake has both kinds
        assert torch.equal(gates[absent, 1 + i], torch.zeros(int(absent.sum())))
        assert bool((gates[~absent, 1 + i] > 0).all())


@pytest.mark.parametrize("data,name", DSRSD_CASES)
def test_dsrsd_private_dropout_closes_private_streams_in_training_only(data, name):
    spec, batch = fake(data)
    model = build(spec, name, dsrsd={"private_dropout": 0.5}, modality_dropout=0.0)
    present = torch.stack([batch.present[m][batch.mask] for m in spec.modalities], dim=1)    # (N, M)
    closed = 0
    for _ in range(20):                                      # fresh draws each pass: 20 x 21 to 103 present streams
        gates = model.train()(batch).aux["gates"]                                            # (N, 1 + M)
        closed += int(((gates[:, 1:] == 0) & present).sum())
        assert torch.allclose(gates.sum(-1), torch.ones(gates.shape[0]))
    assert 0.4 < closed / (20 * int(present.sum())) < 0.6    # about half of the present private streams
    gates = model.eval()(batch).aux["gates"]
    assert not bool(((gates[:, 1:] == 0) & present).any())   # evaluation: every present stream open


def _ednet_target_step(batch) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(bundle g, its steps, steps of bundle g-1) in row 0: a bundle of >= 2 questions with
    bundles before and after it."""
    group = batch.context["bundle_group"][0]
    last = int(group.max())
    for g in range(2, last):
        steps = (group == g).nonzero().squeeze(1)
        if steps.numel() >= 2:
            return g, steps, (group == g - 1).nonzero().squeeze(1)
    raise AssertionError("fake batch has no multi-question bundle in the middle")


def _loud(model: torch.nn.Module) -> torch.nn.Module:
    """Large random weights: the rules are structural, and large weights make any
    violation (and the legitimate dependence on earlier steps) far above 1e-6."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3).requires_grad_(False)
    return model.eval()


@pytest.mark.parametrize("name", EDNET_NAMES)
def test_ednet_no_leakage_from_the_answer_or_later_steps(name):
    spec = SPECS["ednet"]
    batch = ednet_batch(spec, batch_size=3, seed=1)
    batch.present = {m: batch.valid.clone() for m in spec.modalities}          # an absent unit would not move at all
    model = _loud(build(spec, name))
    g, bundle, earlier = _ednet_target_step(batch)
    group = batch.context["bundle_group"][0]
    known = group <= g                                                            # steps whose logit may not move
    base = model(batch).logits[0].detach()

    def logits_after(change) -> torch.Tensor:
        changed = copy.deepcopy(batch)
        change(changed)
        return model(changed).logits[0].detach()

    def flip_responses(steps):
        def change(b):
            response = b.context["response"]
            response[0, steps] = 1 - response[0, steps]
        return change

    def change_post(steps):
        def change(b):
            behavior = b.inputs["behavior"]
            for i in POST:
                behavior["num"][0, steps, i] = torch.nan_to_num(behavior["num"][0, steps, i]) + 5.0
                behavior["num_present"][0, steps, i] = True
        return change

    def shift_hours(steps):
        def change(b):
            b.context["hours"][0, steps] += 100.0
        return change

    later = (group > g).nonzero().squeeze(1)
    for what, change in [("later responses", flip_responses(later)),
                         ("later steps' clock (forgetting)", shift_hours(later)),
                         ("responses of the same bundle", flip_responses(bundle)),
                         ("post features of the bundle", change_post(bundle))]:
        moved = (logits_after(change) - base).abs()[known]
        assert float(moved.max()) <= 1e-6, f"{name}: {what} reached the logits of steps that may not see them"

    # ... while the previous bundle's response does reach them (so this test can fail)
    assert float((logits_after(flip_responses(earlier)) - base).abs()[bundle].min()) > 1e-5
    if name not in ("single:item", "single:content"):
        assert float((logits_after(change_post(earlier)) - base).abs()[bundle].min()) > 1e-5


@pytest.mark.parametrize("name", EDNET_NAMES)
def test_ednet_padding_never_reaches_real_steps(name):
    spec = SPECS["ednet"]
    batch = ednet_batch(spec, batch_size=4, seed=2)
    model = _loud(build(spec, name))
    pad = ~batch.valid
    assert bool(pad.any())
    noisy = copy.deepcopy(batch)
    noisy.context["response"][pad] = 1
    noisy.inputs["item"]["question"][pad] = 7
    noisy.inputs["behavior"]["num"][pad] = 1e3
    noisy.inputs["behavior"]["num_present"][pad] = True
    noisy.context["hours"][pad] = 1e4
    base, out = model(batch), model(noisy)
    assert float((out.logits - base.logits).abs()[batch.valid].max()) <= 1e-6


@pytest.mark.parametrize("name", model_names(SPECS["oulad"], kind="neural"))
def test_oulad_values_after_the_cutoff_never_reach_the_logits(name):
    spec, batch = fake("oulad")
    model = _loud(build(spec, name))
    noisy = copy.deepcopy(batch)
    clicks, assessments = noisy.inputs["clicks"], noisy.inputs["assessments"]
    clicks["weeks"][~clicks["week_mask"]] = 1e3
    assessments["num"][~assessments["seq_mask"]] = torch.nan
    assessments["type"][~assessments["seq_mask"]] = 3
    assert torch.equal(model(noisy).logits, model(batch).logits)


def _seeded(model, batch, **kwargs):
    """A training-mode forward with the RNG reset: the same aux rows every call."""
    torch.manual_seed(0)
    return model(batch, **kwargs)


def test_dsrsd_aux_losses_ignore_padded_and_absent_rows():
    spec = SPECS["ednet"]
    batch = ednet_batch(spec, batch_size=4, seed=3)
    # Own-modality memories: with the joint memory, a present step's encoding reads the absent
    # tokens of earlier steps (by design), so only this encoder isolates the fusion's masking.
    model = build(spec, "dsrsd", dsrsd={"aux_rows": 24}, dropout=0.0, modality_dropout=0.0, joint_memory=False).eval()
    out = model(batch)
    assert out.aux["losses"] == {}                                               # evaluation: nothing reads them
    rows = out.aux["aux_rows"]
    assert rows.numel() == 24 and bool(batch.mask.reshape(-1)[rows].all())      # sampled among the scored units
    for m in spec.modalities:
        assert torch.equal(out.aux["aux_present"][m], batch.present[m].reshape(-1)[rows])
        assert out.aux["shared"][m].shape == (24, SMALL_DSRSD["k_shared"]) == out.aux["private"][m].shape

    # training (no dropout, same sampled rows): garbage on padding gives identical losses
    model.train()
    losses = _seeded(model, batch).aux["losses"]
    assert set(losses) == set(AUX_LOSSES)
    noisy = copy.deepcopy(batch)
    noisy.context["response"][~batch.valid] = 1
    noisy.inputs["item"]["question"][~batch.valid] = 5
    same = _seeded(model, noisy).aux["losses"]
    assert all(torch.equal(same[k], losses[k]) for k in AUX_LOSSES)

    # the absent token is what absent units carry; the aux losses never see it ...
    base_logits = _seeded(model, batch).logits
    with torch.no_grad():
        for token in model.absent.values():
            token.add_(3.0)
    moved = _seeded(model, batch)
    assert all(torch.equal(moved.aux["losses"][k], losses[k]) for k in AUX_LOSSES)
    # ... though the fusion does (the gate reads every stream to weigh the present ones)
    assert not torch.equal(moved.logits, base_logits)

    # training samples a random subset, evaluation an evenly spaced one
    train_rows = _seeded(model, batch).aux["aux_rows"]
    assert train_rows.numel() == 24 and bool(batch.mask.reshape(-1)[train_rows].all())
    assert not torch.equal(train_rows, rows)


@pytest.mark.parametrize("name", ["dsrsd", "dsrsd@joint"])
def test_dsrsd_ablate_removes_streams(name):
    spec = SPECS["ednet"]
    batch = ednet_batch(spec, batch_size=3, seed=4)
    model = build(spec, name).eval()
    base = model(batch)
    private = model(batch, ablate=frozenset({"item.private"}))
    assert torch.equal(private.aux["gates"][:, 1], torch.zeros(private.aux["gates"].shape[0]))
    assert not torch.equal(private.logits, base.logits)
    shared = model(batch, ablate=frozenset({"item.shared"}))
    assert not torch.equal(shared.logits, base.logits)
    everything = frozenset(f"{m}.{s}" for m in spec.modalities for s in ("shared", "private"))
    nothing = model(batch, ablate=everything)
    assert finite(nothing.logits) and torch.equal(nothing.aux["gates"][:, 0], torch.ones(nothing.aux["gates"].shape[0]))
    with pytest.raises(BadInput, match="cannot ablate"):
        model(batch, ablate=frozenset({"clicks.shared"}))
    # ablation changes what is fused, never the auxiliary losses
    quiet = build(spec, name, dropout=0.0, modality_dropout=0.0).train()
    assert torch.equal(_seeded(quiet, batch, ablate=frozenset({"item.shared"})).aux["losses"]["infonce"],
                       _seeded(quiet, batch).aux["losses"]["infonce"])
    for baseline_name in ("concat", "early", "coattn"):                       # baselines ignore it
        baseline = build(spec, baseline_name).eval()
        assert torch.equal(baseline(batch, ablate=frozenset({"item.private"})).logits, baseline(batch).logits)


@pytest.mark.parametrize("data,core", [("ednet", ""), ("ednet", "@joint"), ("oulad", "")])
def test_ablation_variants_remove_their_stream(data, core):
    spec, batch = fake(data)
    M = len(spec.modalities)
    gates = {name: build(spec, name + core).eval()(batch).aux["gates"] for name in ("dsrsd:no-private", "dsrsd:no-shared", "dsrsd:mean-gate")}
    # no-private: every private stream weighs exactly 0, the consensus carries everything
    assert torch.equal(gates["dsrsd:no-private"][:, 1:], torch.zeros(gates["dsrsd:no-private"].shape[0], M))
    # no-shared: the consensus weighs exactly 0 (every unit has a present modality here)
    assert torch.equal(gates["dsrsd:no-shared"][:, 0], torch.zeros(gates["dsrsd:no-shared"].shape[0]))
    # mean-gate: equal weights over the open streams (1 / their number; absent ones 0)
    mean = gates["dsrsd:mean-gate"]
    n_open = (mean > 0).sum(-1, keepdim=True)
    assert bool((n_open >= 2).all()) and torch.allclose(mean, (mean > 0) / n_open)
    # private dropout cannot leave a no-shared unit without a stream
    model = build(spec, "dsrsd:no-shared" + core, dsrsd={"private_dropout": 0.9}).train()
    fusion = model.decomposition if core else model.fusion
    assert fusion.private_dropout == 0.0 and finite(model(batch).logits)


def test_modality_dropout_never_hides_all_of_a_units_modalities():
    g = torch.Generator().manual_seed(0)
    present = {m: torch.rand(200, 12, generator=g) < 0.8 for m in ("a", "b", "c")}
    torch.manual_seed(0)
    kept = drop_modalities(present, 0.6)
    had = torch.stack(list(present.values()), -1)
    now = torch.stack(list(kept.values()), -1)
    assert bool((now <= had).all())                                              # only hides
    assert bool(now.any(-1)[had.any(-1)].all())                                   # never all of a unit's
    hidden = (had & ~now).sum() / had.sum()
    assert 0.2 < float(hidden) < 0.6
    # a row is hidden as a whole: where a row lost a modality, it lost it at every step that
    # had it, except steps restored whole because hiding would have left them nothing
    restored = (now == had).all(-1)
    for i in range(had.shape[-1]):
        lost = had[..., i] & ~now[..., i]
        rows = lost.any(1)
        assert bool((lost | ~had[..., i] | restored)[rows].all())
    single = {"a": present["a"]}
    assert drop_modalities(single, 0.9) is single                                # one modality: never hidden


@pytest.mark.parametrize("data,name", CASES)
def test_models_are_deterministic_in_eval_and_roundtrip_through_safetensors(data, name, tmp_path):
    spec, batch = fake(data)
    model = build(spec, name, modality_dropout=0.5).eval()
    first = model(batch).logits
    assert torch.equal(first, model(batch).logits)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    clone = build(spec, name)
    with torch.no_grad():
        for p in clone.parameters():
            p.zero_()
    clone.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(clone.eval()(batch).logits, first)


def test_training_with_modality_dropout_runs():
    spec, batch = fake("ednet")
    model = build(spec, "dsrsd", modality_dropout=0.9).train()
    for _ in range(3):
        out = model(batch)
        loss = task_loss(out.logits, batch.target, batch.mask, 1) + sum(out.aux["losses"].values())
        loss.backward()
        assert finite(loss)


@pytest.mark.parametrize("data,name", [case for case in CASES if case[0] != "oulad-result4"])
def test_bf16_autocast_gives_float32_logits_and_losses(data, name):
    """The trainer autocasts to bf16 on CUDA; CPU autocast exercises the same dtype mixing."""
    spec, batch = fake(data)
    model = build(spec, name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        loss = task_loss(out.logits, batch.target, batch.mask, spec.n_outputs) + sum(out.aux["losses"].values())
    assert out.logits.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.aux["losses"].values())
    loss.backward()
    assert finite(loss) and all(finite(p.grad) for p in model.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------- stacked encoders and fast paths


def test_stacked_ednet_core_equals_one_core_per_modality():
    """The M encoders run stacked; each modality's output must be exactly what its own
    core alone gives (no head or weight of one modality touches another's)."""
    spec = SPECS["ednet"]
    batch = ednet_batch(spec, batch_size=3, seed=5)
    cfg = ModelConfig(**SMALL, n_layers=2)
    torch.manual_seed(0)
    stacked = _loud(build_core(spec, cfg, stacks=3))
    g = torch.Generator().manual_seed(0)
    view = View(torch.randn(3, *batch.valid.shape, SMALL["d_model"], generator=g),
                torch.randn(3, *batch.valid.shape, SMALL["d_model"], generator=g))
    context = (batch.context["response"], batch.context["bundle_group"], batch.valid)
    together = stacked(view, *context)                                          # (3, B, T, d)
    for i in range(3):
        alone = build_core(spec, cfg, stacks=1).eval()
        state = stacked.state_dict()
        alone.load_state_dict({name: state[re.sub(r"\b(each|position|start|decay|decay_time)\.0\b", rf"\g<1>.{i}", name)]
                               for name in alone.state_dict()})
        own = alone(View(view.query[i:i + 1], view.memory[i:i + 1]), *context)[0]
        assert torch.allclose(together[i], own, atol=1e-5), i
    # ... and changing one modality's inputs moves only that modality's output
    moved = stacked(View(view.query, view.memory.index_fill(0, torch.tensor([1]), 2.0)), *context)
    assert torch.equal(moved[0], together[0]) and torch.equal(moved[2], together[2])
    assert not torch.equal(moved[1], together[1])


def test_fast_dropout_keeps_one_minus_p_scaled_and_is_identity_in_eval():
    x = torch.ones(200_000)
    torch.manual_seed(0)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.9) < 0.005
    assert torch.allclose(y[kept], torch.full((int(kept.sum()),), 1 / 0.9))
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0, training=True) is x
    assert dropout(x.bfloat16(), 0.3, training=True).dtype == torch.bfloat16
    torch.manual_seed(1)
    other = dropout(x, 0.1, training=True) != 0
    assert 0.15 < float((other != kept).float().mean()) < 0.21                    # fresh draws: 2 p (1 - p) differ
    leaf = torch.randn(7, 5, requires_grad=True)                                  # gradient: the same mask and scale
    out = dropout(leaf, 0.5, training=True)
    out.sum().backward()
    assert torch.equal(leaf.grad, (out != 0).float() * 2.0)


def test_bag_mean_is_the_mean_of_the_real_ids():
    table = torch.nn.Embedding(10, 4, padding_idx=0)
    ids = torch.tensor([[[3, 0, 5], [0, 0, 0]], [[7, 7, 0], [2, 0, 0]]])            # (2, 2, K=3)
    out = bag_mean(table, ids)
    assert out.shape == (2, 2, 4)
    w = table.weight
    expected = torch.stack([torch.stack([(w[3] + w[5]) / 2, torch.zeros(4)]), torch.stack([w[7], w[2]])])
    assert torch.allclose(out, expected)


# ----------------------------------------------------------------------------- dsrsd.core = "joint"


def test_joint_core_is_for_ednet_only_and_runs_one_core():
    with pytest.raises(BadInput, match=r"dsrsd.core = 'joint' .* use --set dsrsd.core=per-modality"):
        build(SPECS["oulad"], "dsrsd@joint")
    joint, early = build(SPECS["ednet"], "dsrsd@joint"), build(SPECS["ednet"], "early")
    # the core is early's, at early's size: one stack, not one per modality
    assert sum(p.numel() for p in joint.core.parameters()) == sum(p.numel() for p in early.core.parameters())


@pytest.mark.parametrize("name", ["dsrsd", "dsrsd@joint", "early"])
def test_an_absent_modality_leaves_every_step(name):
    """Where a modality is absent its inputs reach nothing, neither the step's own query nor
    the history later steps read: only its absent token does."""
    spec = SPECS["ednet"]
    batch = ednet_batch(spec, batch_size=3, seed=5)
    model = _loud(build(spec, name))
    noisy = copy.deepcopy(batch)                                  # every step's content changed
    noisy.inputs["content"]["part"][batch.valid] = 3
    assert float((model(noisy).logits - model(batch).logits).abs()[batch.mask].max()) > 1e-5   # content counts ...
    without, noisy_without = batch.without("content"), noisy.without("content")
    assert float((model(noisy_without).logits - model(without).logits).abs()[batch.mask].max()) <= 1e-6   # ... unless absent


def test_sigmoid_gates_open_each_stream_on_its_own():
    """dsrsd.gate = "sigmoid": closed streams weigh exactly 0, open ones lie in (0, 1) without
    sharing a total of 1; the mean-gate ablation opens every open stream half."""
    spec, batch = fake("ednet")
    for name in ("dsrsd", "dsrsd@joint"):
        model = _loud(build(spec, name, dsrsd={"gate": "sigmoid"}))
        gates = model(batch).aux["gates"]                                           # (N, 1 + M)
        present = torch.stack([batch.present[m][batch.mask] for m in spec.modalities], dim=1)
        assert torch.equal(gates[:, 1:][~present], torch.zeros(int((~present).sum())))
        assert bool(((gates[:, 1:][present] > 0) & (gates[:, 1:][present] < 1)).all())
        assert not torch.allclose(gates.sum(-1), torch.ones(gates.shape[0]))      # no shared budget
        mean_gate = "dsrsd:mean-gate@joint" if name.endswith("@joint") else "dsrsd:mean-gate"
        mean = build(spec, mean_gate, dsrsd={"gate": "sigmoid"}).eval()(batch).aux["gates"]
        assert torch.equal(mean[:, 1:][present], torch.full((int(present.sum()),), 0.5))
