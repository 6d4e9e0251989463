"""The batched feature collector against brute force over all tokens."""

import torch

from saescope.interpret.collect import NO_TOKEN, FeatureCollector, quantile_examples


def _data(n_batches=4, b=3, t=10, f=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        acts = torch.rand(b, t, f, generator=generator) * (torch.rand(b, t, f, generator=generator) < 0.3)
        tokens = torch.randint(0, 50, (b, t), generator=generator)
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[:, 0] = False  # BOS never counts
        batches.append((acts, tokens, mask))
    return batches


def test_top_k_and_windows_match_brute_force():
    batches = _data()
    collector = FeatureCollector(7, top_k=5, n_samples=6, window=2, n_bins=10, log10_range=(-3, 0))
    for acts, tokens, mask in batches:
        collector.update(acts, tokens, mask)
    stats = collector.finish()
    all_acts = torch.cat([a * m.unsqueeze(-1) for a, _t, m in batches])  # [contexts, t, f]
    all_tokens = torch.cat([t for _a, t, _m in batches])
    for feature in range(7):
        values = all_acts[..., feature].reshape(-1)
        expected = values.sort(descending=True).values[:5]
        assert torch.allclose(stats.top_values[feature], expected)
        for rank in range(5):
            if stats.top_values[feature, rank] == 0:
                continue
            flat = int((values == stats.top_values[feature, rank]).nonzero()[0])
            context, position = divmod(flat, all_acts.shape[1])
            for offset in range(-2, 3):
                p = position + offset
                got_value = stats.top_windows[feature, rank, offset + 2]
                got_token = stats.top_tokens[feature, rank, offset + 2]
                if 0 <= p < all_acts.shape[1]:
                    assert got_value == all_acts[context, p, feature] and got_token == all_tokens[context, p]
                else:
                    assert got_value == 0 and got_token == NO_TOKEN
        fired = values[values > 0]
        assert stats.fire_counts[feature] == fired.numel()
        assert stats.max_values[feature] == fired.max()
        assert torch.isclose(stats.activation_sums[feature], fired.double().sum())
        assert stats.histogram[feature].sum() == fired.numel()
        # samples are distinct firing activations, sorted descending, with their window centred on them
        sampled = stats.sample_values[feature]
        assert all(float(v) in fired.tolist() for v in sampled if v > 0)
        assert torch.equal(sampled, sampled.sort(descending=True).values)
        assert torch.equal(stats.sample_windows[feature, :, 2], sampled)
    assert stats.n_tokens == sum(int(m.sum()) for _a, _t, m in batches)


def test_samples_cover_the_distribution_uniformly():
    # One feature firing on every token with value = position index: samples should spread over the range.
    t = 200
    acts = torch.arange(1, t + 1, dtype=torch.float32).view(1, t, 1).repeat(2, 1, 1)
    collector = FeatureCollector(1, top_k=3, n_samples=100, window=0, seed=1)
    collector.update(acts, torch.zeros(2, t, dtype=torch.long), torch.ones(2, t, dtype=torch.bool))
    stats = collector.finish()
    sampled = stats.sample_values[0]
    assert (sampled > 0).all() and sampled.min() < 40 and sampled.max() > 160
    bands = quantile_examples(stats, 0, n_bands=5, per_band=2)
    assert len(bands) == 10 and [b for b, _i in bands][::2] == [0.0, 0.2, 0.4, 0.6, 0.8]


def test_feature_that_never_fires_has_empty_results():
    acts = torch.zeros(2, 5, 3)
    acts[0, 2, 1] = 0.5
    collector = FeatureCollector(3, top_k=4, n_samples=4, window=1)
    collector.update(acts, torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool))
    stats = collector.finish()
    assert stats.fire_counts.tolist() == [0, 1, 0]
    assert (stats.top_values[0] == 0).all() and stats.top_values[1, 0] == 0.5
    assert (stats.sample_values[1] > 0).sum() == 1
