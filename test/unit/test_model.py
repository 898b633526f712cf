"""WSA head and baselines in PyTorch (no ONNX): alpha, shared scorer, add/remove, SAC parts."""
import copy

import pytest
import torch
import yaml

from wsa_ros.model.wsa import FusionPolicy, make_head_config, normalize_scores

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

ENCS = [
    {"name": "ae", "output_shape": [16, 5, 5], "role": "feature"},
    {"name": "idm", "output_shape": [12], "role": "feature"},
    {"name": "kp", "output_shape": [4, 2], "role": "feature"},
    {"name": "ctx", "output_shape": [8, 4, 4], "role": "context"},
]


def _policy(fusion="wsa", normalization="softmax", proprio=3, seed=0, **kw):
    torch.manual_seed(seed)
    opts = {"d": 16, "actor_hidden": [32], "critic_hidden": [32], **kw}
    return FusionPolicy.from_config(make_head_config(fusion, ENCS, 2, proprio, normalization, **opts))


def _embs(batch=4, seed=0, encs=ENCS):
    g = torch.Generator().manual_seed(seed)
    return {e["name"]: torch.randn(batch, *e["output_shape"], generator=g) for e in encs}


def _proprio(batch=4, seed=0, dim=3):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 100))


def _sharpen_scorer(p, std=0.5, seed=1):
    """Larger scorer weights (and, for relu normalisation, a positive bias so that scores
    are mostly > 0) so that alpha visibly depends on the inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in p.scorer.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * std)
        if p.normalization == "relu":
            p.scorer.net[-1].bias.fill_(3.0)


@pytest.mark.parametrize("norm", ["softmax", "relu"])
def test_wsa_alpha_starts_uniform_sums_to_one_and_depends_on_inputs(norm):
    p = _policy(normalization=norm)
    _, alpha = p.features(_embs(), _proprio())
    assert alpha.shape == (4, 3)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4))
    assert float((alpha - 1 / 3).abs().max().detach()) < 0.01  # small-init scorer: near uniform
    _sharpen_scorer(p)
    _, a1 = p.features(_embs(seed=1), _proprio())
    _, a2 = p.features(_embs(seed=2), _proprio())
    torch.testing.assert_close(a1.sum(-1), torch.ones(4))
    assert float((a1 - a2).abs().max()) > 1e-3
    assert float((a1 - a1[:1]).abs().max()) > 1e-3  # differs across samples too


def test_fused_state_is_the_alpha_weighted_sum_of_adapted_embeddings():
    p = _policy(proprio=0)
    _sharpen_scorer(p)
    e = _embs()
    state, alpha = p.features(e)
    E = torch.stack([p.adapters[n](e[n]) for n in ["ae", "idm", "kp"]], 1)
    C = p.context_adapter(e["ctx"])
    s = torch.stack([p.scorer(torch.cat([C, E[:, i]], -1)) for i in range(3)], 1)
    torch.testing.assert_close(alpha, torch.softmax(s, -1))
    torch.testing.assert_close(state, (alpha.unsqueeze(-1) * E).sum(1))


def test_relu_normalisation_formula_and_uniform_fallback():
    s = torch.tensor([[2.0, -1.0, 1.0], [-3.0, -1.0, -0.5]])
    a = normalize_scores(s, "relu")
    torch.testing.assert_close(a[0], torch.tensor([2 / 3, 0.0, 1 / 3]))
    torch.testing.assert_close(a[1], torch.full((3,), 1 / 3))  # every score <= 0
    torch.testing.assert_close(normalize_scores(s, "softmax"), torch.softmax(s, -1))


@pytest.mark.parametrize(
    "fusion,want",
    [("mean", [1 / 3] * 3), ("concat", [1 / 3] * 3), ("single", [0.0, 1.0, 0.0])],
)
def test_baseline_alphas(fusion, want):
    kw = {"single": "idm"} if fusion == "single" else {}
    p = _policy(fusion, **kw)
    state, alpha = p.features(_embs(), _proprio())
    assert state.shape == (4, 16 + 3)
    torch.testing.assert_close(alpha, torch.tensor([want] * 4))
    if fusion == "single":  # only the chosen encoder matters
        e2 = _embs()
        e2["ae"] = e2["ae"] + 5.0
        torch.testing.assert_close(p.features(e2, _proprio())[0], state)
        e2["idm"] = e2["idm"] + 5.0
        assert not torch.allclose(p.features(e2, _proprio())[0], state)


def test_e2e_uses_a_nature_cnn_on_pixels():
    encs = [{"name": "pixels", "output_shape": [3, 40, 40], "role": "feature"}]
    p = FusionPolicy.from_config(make_head_config("e2e", encs, 2, 0, d=8, actor_hidden=[8], critic_hidden=[8]))
    convs = [m for m in p.adapters["pixels"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)), (64, (3, 3), (1, 1))]
    a, alpha = p.deterministic_action({"pixels": torch.rand(2, 3, 40, 40)})
    assert a.shape == (2, 2) and torch.equal(alpha, torch.ones(2, 1))
    with pytest.raises(ValueError, match="Nature CNN"):
        make_head_config("e2e", [{"name": "pixels", "output_shape": [3, 20, 20]}], 2)


def test_add_encoder_reuses_shared_scorer_adapters_and_heads_exactly():
    p = _policy()
    # make the weights "trained" (not their init values)
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    _sharpen_scorer(p)
    mean, _, _ = p.actor(_embs(), _proprio())
    q1, q2 = p.critic(_embs(), _proprio(), torch.zeros(4, 2))
    (mean.square().mean() + q1.mean() + q2.mean()).backward()
    opt.step()
    before = copy.deepcopy(p.state_dict())

    new = p.add_encoder("extra", [7], role="feature")
    sd = new.state_dict()
    for k, v in before.items():
        assert torch.equal(sd[k], v), k
    assert sorted(new.fresh_keys) == sorted(k for k in sd if k.startswith("adapters.extra."))
    assert torch.equal(new.scorer.net[-1].weight, p.scorer.net[-1].weight)
    n_old = sum(x.numel() for x in p.parameters())
    n_new = sum(x.numel() for x in new.parameters())
    assert n_new - n_old == sum(x.numel() for x in new.adapters["extra"].parameters())
    e = _embs()
    e["extra"] = torch.randn(4, 7)
    _, alpha = new.features(e, _proprio())
    assert alpha.shape == (4, 4)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4))
    assert new.config["encoders"][-1] == {"name": "extra", "output_shape": [7], "role": "feature"}

    back = new.remove_encoder("extra")
    for k, v in before.items():
        assert torch.equal(back.state_dict()[k], v), k
    torch.testing.assert_close(back.features(_embs(), _proprio())[0], p.features(_embs(), _proprio())[0])


def test_add_remove_encoder_errors():
    p = _policy()
    with pytest.raises(ValueError, match="already"):
        p.add_encoder("ae", [3])
    with pytest.raises(ValueError, match="context encoder"):
        p.add_encoder("ctx2", [3], role="context")
    with pytest.raises(ValueError, match="context encoder WSA needs"):
        p.remove_encoder("ctx")
    with pytest.raises(ValueError, match="not in the head"):
        p.remove_encoder("nope")
    with pytest.raises(ValueError, match="uses it"):
        _policy("single").remove_encoder("ae")


def test_config_round_trip_is_yaml_safe():
    p = _policy(normalization="relu", scorer_hidden=8, log_std="learned")
    cfg = yaml.safe_load(yaml.safe_dump(p.config))
    q = FusionPolicy.from_config(cfg)
    q.load_state_dict(p.state_dict())
    a1, al1 = p.deterministic_action(_embs(), _proprio())
    a2, al2 = q.deterministic_action(_embs(), _proprio())
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(al1, al2)
    assert cfg == p.config


def test_config_errors_name_the_cause():
    with pytest.raises(ValueError, match="needs a context encoder"):
        make_head_config("wsa", ENCS[:3], 2)
    with pytest.raises(ValueError, match="fusion 'magic'"):
        make_head_config("magic", ENCS, 2)
    with pytest.raises(ValueError, match="name"):
        make_head_config("mean", [{"name": "a.b", "output_shape": [3]}], 2)
    with pytest.raises(ValueError, match="duplicate"):
        make_head_config("mean", [ENCS[1], ENCS[1]], 2)
    with pytest.raises(ValueError, match="unknown head option"):
        make_head_config("mean", ENCS, 2, hiden=3)
    with pytest.raises(ValueError, match="more than one context"):
        make_head_config("wsa", ENCS + [{"name": "c2", "output_shape": [3], "role": "context"}], 2)


def test_input_errors_name_the_encoder():
    p = _policy()
    e = _embs()
    del e["kp"]
    with pytest.raises(KeyError, match="kp"):
        p.features(e, _proprio())
    e = _embs()
    e["idm"] = torch.randn(4, 13)
    with pytest.raises(ValueError, match="idm"):
        p.features(e, _proprio())
    with pytest.raises(ValueError, match="proprio"):
        p.features(_embs(), None)


def test_sac_sample_log_prob_matches_torch_distributions():
    p = _policy(log_std="state")
    mean, log_std, _ = p.actor(_embs(), _proprio())
    assert torch.all(log_std >= p.config["log_std_min"]) and torch.all(log_std <= p.config["log_std_max"])
    torch.testing.assert_close(log_std, torch.full_like(log_std, -0.5), atol=0.05, rtol=0)
    torch.manual_seed(3)
    a, logp = FusionPolicy.squash(mean, log_std)
    assert torch.all(a.abs() < 1)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform(cache_size=1)]
    )
    torch.testing.assert_close(logp, dist.log_prob(a).sum(-1), atol=1e-3, rtol=1e-4)
    q1, q2 = p.critic(_embs(), _proprio(), a)
    assert q1.shape == (4,) and not torch.equal(q1, q2)


def test_learned_log_std_is_a_parameter_initialised_at_minus_half():
    p = _policy(log_std="learned")
    _, log_std, _ = p.actor(_embs(), _proprio())
    torch.testing.assert_close(log_std, torch.full((4, 2), -0.5))
    assert any(prm is p.log_std_param for prm in p.actor_parameters())


def test_behaviour_cloning_step_trains_adapters_scorer_and_actor():
    p = _policy()
    _sharpen_scorer(p, std=0.05)
    before = copy.deepcopy(p.state_dict())
    opt = torch.optim.Adam(p.fusion_parameters() + p.actor_parameters(), lr=1e-2)
    target = torch.full((4, 2), 0.5)
    losses = []
    for _ in range(30):
        a, _ = p.deterministic_action(_embs(), _proprio())
        loss = torch.nn.functional.mse_loss(a, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0]
    after = p.state_dict()
    for prefix in ("adapters.ae.", "context_adapter.", "scorer.", "actor_net."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix
    for k in after:
        if k.startswith("q1.") or k.startswith("q2."):
            assert torch.equal(before[k], after[k])


def test_keypoint_spatial_adapter_reads_out_positions():
    from wsa_ros.model.wsa import KeypointAdapter

    p = _policy(spatial_adapter="keypoints", context_adapter="spatial")
    assert isinstance(p.adapters["ae"], KeypointAdapter) and isinstance(p.context_adapter, KeypointAdapter)
    ad = KeypointAdapter([2, 9, 11], 8, keypoints=1)
    with torch.no_grad():
        ad.maps.weight.zero_()
        ad.maps.weight[0, 0] = 20.0
        ad.maps.bias.zero_()
    for (i, j) in [(0, 0), (4, 5), (8, 10), (2, 7)]:
        x = torch.zeros(1, 2, 9, 11)
        x[0, 0, i, j] = 1.0
        kp = ad.keypoints(x)[0, 0]
        torch.testing.assert_close(kp, torch.tensor([-1 + 2 * j / 10, -1 + 2 * i / 8]), atol=1e-3, rtol=0)
    # the whole head still trains / exports through the same interface
    a, alpha = p.deterministic_action(_embs(), _proprio())
    assert a.shape == (4, 2) and torch.allclose(alpha.sum(-1), torch.ones(4))


@pytest.mark.parametrize("norm", [False, True])
def test_twin_critics_run_batched_with_the_numbers_of_the_two_separate_critics(norm):
    """``critic_from_state`` stacks q1 and q2 into one batched product per layer (and, with
    ``critic_norm``, one layer norm with each twin's own scale and shift)."""
    p = _policy(critic_hidden=[32, 24], critic_norm=norm)
    lns = [m for m in [*p.q1, *p.q2] if isinstance(m, torch.nn.LayerNorm)]
    assert len(lns) == (4 if norm else 0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in lns:  # away from the identity initialisation, different per twin
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    state, action = torch.randn(6, p.state_dim, generator=g), torch.rand(6, 2, generator=g) * 2 - 1
    q1, q2 = p.critic_from_state(state, action)
    x = torch.cat([state, action], -1)
    torch.testing.assert_close(q1, p.q1(x).squeeze(-1))
    torch.testing.assert_close(q2, p.q2(x).squeeze(-1))
    assert not torch.allclose(q1, q2)
