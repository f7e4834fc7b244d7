"""Hook points read and patch the right tensors; looping shares weights."""
import pytest
import torch

from grokray.config import ModelConfig
from grokray.model import LoopedTransformer, SelfAttention


def make(n_layers=2, n_loops=3, reinject=False, seed=0, causal=True):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, d_mlp=64, n_layers=n_layers, n_loops=n_loops, reinject_input=reinject,
                      causal=causal)
    return LoopedTransformer(cfg, vocab_size=17).eval()


TOKENS = torch.tensor([[1, 12, 14], [3, 10, 16], [5, 11, 13]])


def test_hook_names_cover_every_block_application_in_order():
    m = make()
    assert m.resid_names == ["embed"] + [f"loop.{i}.layer.{j}.resid_post" for i in range(3) for j in range(2)]
    assert m.n_depths == 7


@pytest.mark.parametrize("n_layers, n_loops", [(1, 1), (1, 2), (2, 3), (3, 1)])
def test_parameters_do_not_grow_with_loops(n_layers, n_loops):
    base = make(n_layers, 1).num_params()
    assert make(n_layers, n_loops).num_params() == base


@pytest.mark.parametrize("reinject", [False, True])
def test_cache_holds_the_residual_stream_recomputed_by_hand(reinject):
    m = make(reinject=reinject)
    logits, cache = m.run_with_cache(TOKENS)
    x = m.tok_emb(TOKENS) + m.pos_emb(torch.arange(3))[None]
    emb = x
    torch.testing.assert_close(cache["embed"], x)
    for i in range(3):
        if i and reinject:
            x = x + emb
        for j, block in enumerate(m.blocks):
            x = block(x)
            torch.testing.assert_close(cache[f"loop.{i}.layer.{j}.resid_post"], x)
    torch.testing.assert_close(logits, m.decode(x))
    torch.testing.assert_close(logits, m(TOKENS))  # caching does not change the output


def test_loop_iterations_have_distinct_cached_states():
    _, cache = make(n_layers=1, n_loops=3).run_with_cache(TOKENS)
    assert not torch.allclose(cache["loop.0.layer.0.resid_post"], cache["loop.2.layer.0.resid_post"])


def test_patch_overwrites_one_position_and_later_states_follow():
    m = make()
    clean, clean_cache = m.run_with_cache(TOKENS)
    site = "loop.1.layer.0.resid_post"
    replacement = torch.randn(3, 32)

    def patch(x, name):
        assert name == site
        x = x.clone()
        x[:, 2] = replacement
        return x

    with m.hooks([(site, patch)]):
        patched, cache = m.run_with_cache(TOKENS)
    torch.testing.assert_close(cache[site][:, 2], replacement)
    torch.testing.assert_close(cache[site][:, :2], clean_cache[site][:, :2])
    # Earlier states untouched; positions before the patch unaffected downstream (causal attention).
    torch.testing.assert_close(cache["loop.0.layer.1.resid_post"], clean_cache["loop.0.layer.1.resid_post"])
    torch.testing.assert_close(patched[:, :2], clean[:, :2])
    assert not torch.allclose(patched[:, 2], clean[:, 2])
    # Hooks are removed afterwards.
    torch.testing.assert_close(m(TOKENS), clean)


def test_patching_with_the_clean_state_is_a_no_op():
    m = make()
    clean, cache = m.run_with_cache(TOKENS)
    hooks = [(n, lambda x, name: cache[name]) for n in m.resid_names]
    torch.testing.assert_close(m.run_with_hooks(TOKENS, hooks), clean)


def test_causal_positions_do_not_see_the_future():
    m = make()
    a = m(TOKENS)
    other = TOKENS.clone()
    other[:, 2] = 15
    b = m(other)
    torch.testing.assert_close(a[:, :2], b[:, :2])


def test_non_causal_positions_see_the_whole_query():
    m = make(causal=False)
    other = TOKENS.clone()
    other[:, 2] = 15
    a, b = m(TOKENS), m(other)
    # changing the last token changes every position's output, the first one included
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3 and (a[:, 1] - b[:, 1]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_matmul_and_sdpa_agree_with_and_without_the_causal_mask(causal):
    m = make(causal=causal)
    _force_attention(m, False)
    sdpa = m(TOKENS)
    _force_attention(m, True)
    torch.testing.assert_close(m(TOKENS), sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reinject", [False, True])
def test_four_and_more_loops_keep_one_hook_per_application(reinject):
    m = make(n_layers=1, n_loops=6, reinject=reinject)
    logits, cache = m.run_with_cache(TOKENS)
    assert m.n_depths == 7 and len(cache) == 7
    # the last hook is the residual the logits are decoded from
    torch.testing.assert_close(m.decode(cache["loop.5.layer.0.resid_post"]), logits)


def _force_attention(model: LoopedTransformer, matmul: bool | None) -> None:
    for mod in model.modules():
        if isinstance(mod, SelfAttention):
            mod.matmul_attention = matmul


def test_matmul_attention_equals_sdpa_in_fp32():
    m = make()
    _force_attention(m, False)
    sdpa = m(TOKENS)
    _force_attention(m, True)
    torch.testing.assert_close(m(TOKENS), sdpa, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_picks_matmul_attention_and_agrees_with_sdpa():
    m = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = m(TOKENS).float()                  # default: matmul attention under bf16
        _force_attention(m, False)
        sdpa = m(TOKENS).float()
    fp32 = m(TOKENS)
    # The two bf16 kernels differ only by bf16 rounding: far closer than bf16 is to fp32.
    assert (auto - sdpa).abs().max() <= max(0.05, 2 * (sdpa - fp32).abs().max())
    assert auto.argmax(-1).eq(fp32.argmax(-1)).float().mean() >= 0.9
