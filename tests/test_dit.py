"""WanDiT against independent references: diffusers' WanTransformer3DModel (bidirectional, per-token timesteps)
and the model's own full-sequence forward (block-causal, windowed, teacher forcing) vs the KV-cached stream."""
import pytest
import torch
from diffusers import WanTransformer3DModel

from causvid.models.wan import MaskSpec, WanDiT, set_attention_backend
from causvid.models.wan.rope import rope_angles, rope_split

TINY = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_len=16, text_dim=32, freq_dim=32)
H = W = 8  # latent size -> 4x4 = 16 tokens per frame


def random_tiny(**kw):
    model = WanDiT.from_preset("tiny", **kw).eval()
    with torch.no_grad():
        for p in model.parameters():  # Wan's init zeroes the head: give every weight a value instead
            p.normal_(0, 0.1)
    return model


def diffusers_reference():
    ref = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16,
                                out_channels=16, text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
    return ref


def test_presets_have_the_released_sizes():
    with torch.device("meta"):  # sizes only: no memory, no init time
        assert sum(p.numel() for p in WanDiT.from_preset("wan2.1-t2v-1.3b").parameters()) == 1_418_996_800
        assert len(WanDiT.from_preset("wan2.1-t2v-14b").blocks) == 40
    assert rope_split(128) == (44, 42, 42)
    m = WanDiT.from_preset("tiny", num_layers=3, text_len=8)
    assert len(m.blocks) == 3 and m.config.text_len == 8
    with pytest.raises(TypeError, match="unknown WanConfig field"):
        WanDiT.from_preset("tiny", num_layer=3)


def test_bidirectional_equals_diffusers(tmp_path):
    ref = diffusers_reference()
    ref.save_pretrained(tmp_path / "transformer")  # a diffusers folder: config.json + safetensors
    model = WanDiT.from_pretrained(tmp_path, text_len=16).eval()
    x, context = torch.randn(2, 3, 16, H, W), torch.randn(2, 16, 32)
    with torch.no_grad():
        ours = model(x, torch.tensor([500.0, 999.0]), context)
        theirs = ref(x.transpose(1, 2), torch.tensor([500.0, 999.0]), context).sample.transpose(1, 2)
        assert (ours - theirs).abs().max() <= 1e-5
        # per-frame timesteps == diffusers' per-token timesteps (each frame's t repeated over its tokens)
        t = torch.rand(2, 3) * 1000
        ours = model(x, t, context)
        per_token = t.repeat_interleave((H // 2) * (W // 2), dim=1)
        theirs = ref(x.transpose(1, 2), per_token, context).sample.transpose(1, 2)
    assert (ours - theirs).abs().max() <= 1e-5
    assert theirs.abs().mean() > 0.1  # a meaningful comparison, not zeros


def test_short_context_is_zero_padded_to_text_len():
    model = random_tiny()
    x, t, context = torch.randn(1, 2, 16, H, W), torch.tensor([300.0]), torch.randn(1, 5, 32)
    padded = torch.cat([context, torch.zeros(1, 11, 32)], dim=1)
    with torch.no_grad():
        assert torch.equal(model(x, t, context), model(x, t, padded))
    with pytest.raises(ValueError, match="text_len=16"):
        model(x, t, torch.randn(1, 17, 32))


def test_mask_rules_by_hand():
    # 4 frames of 1 token, chunks of 2: frames 0-1 see 0-1, frames 2-3 see 0-3.
    m = MaskSpec(num_frames=4, frame_tokens=1, block=2).dense().int()
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    # teacher forcing, framewise, 3 frames: [c0 c1 c2 | n0 n1 n2]
    tf = MaskSpec(num_frames=3, frame_tokens=1, block=1, teacher_forcing=True).dense().int()
    assert tf.tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                           [0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1]]
    # window of 3 frames with 1 sink, framewise, 5 frames: frame 4 sees {0} + {2, 3, 4}
    win = MaskSpec(num_frames=5, frame_tokens=1, block=1, local_attn_size=3, sink_size=1).dense().int()
    assert win[4].tolist() == [1, 0, 0, 1, 1] and win[3].tolist() == [1, 0, 1, 1, 0]


def rule_by_hand(q, k, frames, tokens, block, teacher_forcing, window, sink, first_alone):
    """The module docstring's rule in plain Python, token by token."""
    def block_of(f):
        return 0 if first_alone and f == 0 else (f - first_alone) // block + first_alone

    def block_end(f):  # one past the last frame of f's block
        return 1 if first_alone and f == 0 else first_alone + (block_of(f) - first_alone + 1) * block

    stream = frames * tokens
    qn, kn = q >= stream, k >= stream  # the noisy stream (teacher forcing)
    qf, kf = (q % stream) // tokens, (k % stream) // tokens
    if not teacher_forcing:
        ok = block_of(kf) <= block_of(qf)
    elif qn:
        ok = (kn and block_of(kf) == block_of(qf)) or (not kn and block_of(kf) < block_of(qf))
    else:
        ok = not kn and block_of(kf) <= block_of(qf)
    if window != -1:
        ok = ok and (kf < sink or kf >= block_end(qf) - (window - sink))
    return ok


@pytest.mark.parametrize("block, teacher_forcing, window, sink, first_alone", [
    (2, False, -1, 0, False), (2, True, -1, 0, False), (3, False, -1, 0, True), (3, True, -1, 0, True),
    (1, False, 3, 1, False), (2, False, 5, 2, True), (2, True, 4, 1, False)])
def test_mask_equals_the_rule_token_by_token(block, teacher_forcing, window, sink, first_alone):
    """Every (query, key) pair of 7 frames of 2 tokens against the rule written out per token."""
    frames, tokens = 7, 2
    spec = MaskSpec(frames, tokens, block, teacher_forcing, window, sink, first_alone)
    dense = spec.dense()
    n = frames * tokens * (2 if teacher_forcing else 1)
    expected = [[rule_by_hand(q, k, frames, tokens, block, teacher_forcing, window, sink, first_alone)
                 for k in range(n)] for q in range(n)]
    assert dense.shape == (n, n) and dense.tolist() == expected


@pytest.mark.parametrize("block", [1, 3])
def test_flex_attention_equals_sdpa(block, monkeypatch):
    """The 'flex' backend runs FlexAttention (every masked call) and gives SDPA's result."""
    import causvid.models.wan.attention as attn

    calls, run_flex = [], attn.flex_attention
    monkeypatch.setattr(attn, "flex_attention", lambda *a, **kw: calls.append(kw["block_mask"]) or run_flex(*a, **kw))
    model = random_tiny()
    x, t, context = torch.randn(1, 6, 16, H, W), torch.rand(1, 6) * 1000, torch.randn(1, 16, 32)
    with torch.no_grad():
        dense = model(x, t, context, causal=True, num_frame_per_block=block, local_attn_size=4, sink_size=1)
        clean = torch.randn_like(x)
        tf_dense = model(x, t, context, clean_x=clean, num_frame_per_block=block)
        assert calls == []  # auto on a CPU: SDPA
        set_attention_backend("flex")
        try:
            flex = model(x, t, context, causal=True, num_frame_per_block=block, local_attn_size=4, sink_size=1)
            tf_flex = model(x, t, context, clean_x=clean, num_frame_per_block=block)
        finally:
            set_attention_backend("auto")
    assert (dense - flex).abs().max() <= 1e-5
    assert (tf_dense - tf_flex).abs().max() <= 1e-5
    assert len(calls) == 2 * len(model.blocks) and all(mask is not None for mask in calls)  # self-attention only


def test_the_backend_chosen_is_the_one_attention_runs():
    """set_attention_backend takes effect: 'flash' refuses a mask and, without flash-attn installed, any call;
    'auto' on the CPU runs SDPA with the dense mask."""
    import causvid.models.wan.attention as attn

    q = torch.randn(1, 4, 2, 8)
    mask = MaskSpec(num_frames=2, frame_tokens=2, block=1)
    set_attention_backend("flash")
    try:
        with pytest.raises(ValueError) as error:
            attn.attention(q, q, q, mask)
        assert str(error.value) == "the flash-attn backend takes no mask; use 'flex' or 'sdpa' for masked attention"
        if attn.flash_attn_func is None:
            with pytest.raises(RuntimeError) as error:
                attn.attention(q, q, q)
            assert str(error.value) == "attention backend 'flash' requested but flash-attn is not installed"
    finally:
        set_attention_backend("auto")
    expected = torch.nn.functional.scaled_dot_product_attention(*(q.transpose(1, 2),) * 3, attn_mask=mask.dense())
    assert torch.equal(attn.attention(q, q, q, mask), expected.transpose(1, 2))


def rollout_vs_full(model, block, num_blocks, context_noise=0.0, local_attn_size=-1, sink_size=0,
                    steps=(1000.0, 750.0, 500.0), reference_window=None):
    """Drive the cache as a streaming rollout does; compare each call with the full forward on
    [clean context blocks 0..b-1 (at context_noise) ‖ noisy block b], sliced to block b."""
    context = torch.randn(1, 16, 32)
    cache = model.new_cache(1, max_frames=block * num_blocks, local_attn_size=local_attn_size, sink_size=sink_size)
    ctx_frames, ctx_t = [], []
    worst = 0.0
    with torch.no_grad():
        for b in range(num_blocks):
            start = b * block
            for step in steps:  # denoising calls overwrite the same slots
                noisy = torch.randn(1, block, 16, H, W)
                t = torch.full((1, block), step)
                streamed = model(noisy, t, context, cache=cache, start_frame=start)
                full_x = torch.cat(ctx_frames + [noisy], dim=1)
                full_t = torch.cat(ctx_t + [t], dim=1)
                window = local_attn_size if reference_window is None else reference_window
                full = model(full_x, full_t, context, causal=True, num_frame_per_block=block,
                             local_attn_size=window, sink_size=sink_size if window != -1 else 0)[:, start:]
                worst = max(worst, (streamed - full).abs().max().item())
            clean = torch.randn(1, block, 16, H, W)  # the block's clean output, refreshed into the cache
            t_ctx = torch.full((1, block), context_noise)
            model(clean, t_ctx, None, cache=cache, start_frame=start)  # context=None: cross K/V are cached
            ctx_frames.append(clean)
            ctx_t.append(t_ctx)
    return worst


@pytest.mark.parametrize("block", [1, 3])
def test_kv_cache_equals_block_causal_full_forward(block):
    model = random_tiny()
    assert rollout_vs_full(model, block, num_blocks=3, context_noise=100.0) <= 1e-5
    # the comparison has teeth: a reference that sees less context disagrees
    assert rollout_vs_full(model, block, num_blocks=3, context_noise=100.0, reference_window=block) > 1e-3


@pytest.mark.parametrize("block,window,sink", [(1, 4, 1), (3, 7, 1), (3, 6, 0)])
def test_rolling_window_with_sink_equals_windowed_full_forward(block, window, sink):
    model = random_tiny()
    # 4 blocks: the window overflows, so eviction (ring slots) and the sink are exercised
    n = 4 if block == 3 else 7
    assert rollout_vs_full(model, block, n, local_attn_size=window, sink_size=sink, steps=(1000.0, 500.0)) <= 1e-5
    # ...and the window matters: the unwindowed full forward disagrees once frames were evicted
    assert rollout_vs_full(model, block, n, local_attn_size=window, sink_size=sink, steps=(1000.0,),
                           reference_window=-1) > 1e-3


@pytest.mark.parametrize("block", [1, 3])
def test_teacher_forcing_equals_per_block_reference(block):
    model = random_tiny()
    frames = 2 * block if block > 1 else 3
    noisy, clean = torch.randn(1, frames, 16, H, W), torch.randn(1, frames, 16, H, W)
    t = (torch.rand(1, frames // block) * 1000).repeat_interleave(block, dim=1)  # one t per block
    context = torch.randn(1, 16, 32)
    with torch.no_grad():
        tf = model(noisy, t, context, clean_x=clean, num_frame_per_block=block)
        for b in range(frames // block):
            s, e = b * block, (b + 1) * block
            # by hand: clean blocks 0..b-1 at t = 0, then noisy block b, block-causal
            x = torch.cat([clean[:, :s], noisy[:, s:e]], dim=1)
            tt = torch.cat([torch.zeros(1, s), t[:, s:e]], dim=1)
            ref = model(x, tt, context, causal=True, num_frame_per_block=block)[:, s:e]
            assert (tf[:, s:e] - ref).abs().max() <= 1e-5


def _stream_frames(model, cache, frames, context, query_t=500.0):
    """Refresh clean frames 0..len-1 into the cache one at a time, then denoise frame len; its output."""
    with torch.no_grad():
        for f, clean in enumerate(frames):
            model(clean, torch.zeros(1, 1), context, cache=cache, start_frame=f)
        return model(frames[0] * 0.5 + 0.3, torch.full((1, 1), query_t), context, cache=cache,
                     start_frame=len(frames))


def test_window_rope_equals_absolute_until_the_window_rolls():
    model, context = random_tiny(), torch.randn(1, 16, 32)
    frames = [torch.randn(1, 1, 16, H, W) for _ in range(6)]
    caches = {mode: model.new_cache(1, local_attn_size=6, sink_size=1, rope_positions=mode)
              for mode in ("absolute", "window")}
    before = {m: _stream_frames(model, c, frames[:5], context) for m, c in caches.items()}  # frames 0..5 fit
    assert (before["absolute"] - before["window"]).abs().max() <= 1e-5
    caches = {mode: model.new_cache(1, local_attn_size=6, sink_size=1, rope_positions=mode)
              for mode in ("absolute", "window")}
    frames = frames + [torch.randn(1, 1, 16, H, W) for _ in range(14)]
    after = {m: _stream_frames(model, c, frames, context) for m, c in caches.items()}  # frame 20: rolled
    # relative RoPE: past the sink nothing changes, the sink's distance (20 vs 6 frames) does
    assert (after["absolute"] - after["window"]).abs().max() > 1e-4


def test_window_rope_rotates_the_window_at_its_ranks():
    """∞-RoPE by hand on a one-layer model (whose cached K/V depend on each frame's input only): frame 4 in a
    window of 3 with a one-frame sink attends to frames 0 (sink), 3 and itself at positions 0, 1, 2, i.e. a
    full causal forward over [frame 0, frame 3, frame 4]; absolute positions would put them at 0, 3, 4."""
    model, context = random_tiny(num_layers=1), torch.randn(1, 16, 32)
    frames = [torch.randn(1, 1, 16, H, W) for _ in range(4)]
    query = frames[0] * 0.5 + 0.3
    streamed = {mode: _stream_frames(model, model.new_cache(1, local_attn_size=3, sink_size=1, rope_positions=mode),
                                     frames, context) for mode in ("absolute", "window")}
    with torch.no_grad():
        reference = model(torch.cat([frames[0], frames[3], query], dim=1), torch.tensor([[0.0, 0.0, 500.0]]),
                          context, causal=True)[:, 2:]
    assert (streamed["window"] - reference).abs().max() <= 1e-5
    assert (streamed["absolute"] - reference).abs().max() > 1e-4


def test_rope_positions_beyond_wan_table():
    cos, sin = rope_angles(2, 1, 1, head_dim=32, start_frame=1500)
    dt = rope_split(32)[0]
    inv = 10000.0 ** (-torch.arange(0, dt, 2, dtype=torch.float64) / dt)
    assert torch.allclose(cos[1, : dt // 2].double(), torch.cos(1501 * inv), atol=1e-6)
    model = random_tiny()
    cache = model.new_cache(1, local_attn_size=3)
    context = torch.randn(1, 16, 32)
    with torch.no_grad():  # a stream long past Wan's 1024-position table keeps working
        for f in range(0, 1040, 1):
            if f % 200 == 0 or f > 1030:
                out = model(torch.randn(1, 1, 16, 2, 2), torch.tensor([500.0]), context, cache=cache, start_frame=f)
            else:  # cheap bookkeeping for frames we do not need to compute
                cache.begin(f, 1, 1, "cpu")
    assert torch.isfinite(out).all()


def test_cache_rejects_out_of_order_and_overflow():
    model = random_tiny()
    cache = model.new_cache(1, max_frames=2)
    x, t, c = torch.randn(1, 1, 16, H, W), torch.tensor([500.0]), torch.randn(1, 16, 32)
    with torch.no_grad():
        model(x, t, c, cache=cache, start_frame=0)
        with pytest.raises(ValueError, match="neither the next block nor a repeat"):
            model(x, t, c, cache=cache, start_frame=5)
        with pytest.raises(ValueError, match=r"^KV cache made for batch 1; this call has batch 2$"):
            model(x.expand(2, -1, -1, -1, -1), t, c.expand(2, -1, -1), cache=cache, start_frame=1)
        model(x, t, c, cache=cache, start_frame=1)
        with pytest.raises(ValueError, match="at most 2 frames"):
            model(x, t, c, cache=cache, start_frame=2)
    with pytest.raises(ValueError, match="local_attn_size"):
        model(x, t, c, causal=True, num_frame_per_block=3, local_attn_size=3, sink_size=1)


def test_new_prompt_replaces_cached_cross_attention():
    model = random_tiny()
    x, t = torch.randn(1, 1, 16, H, W), torch.tensor([500.0])
    c1, c2 = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    with torch.no_grad():
        model(x, t, c1, cache=(cache := model.new_cache(1, max_frames=1)), start_frame=0)
        again = model(x, t, c2, cache=cache, start_frame=0)
        fresh = model(x, t, c2, cache=model.new_cache(1, max_frames=1), start_frame=0)
    assert torch.equal(again, fresh)


def test_gradient_flows_through_current_block_only():
    """Self-Forcing's exit step: the block's own K/V carry gradient, cached context does not, and later
    in-place cache writes (the refresh pass) do not break the backward. The store then holds the refresh's
    values with the exit step's graph (the straight-through path), at the exit frame's slots only."""
    model = random_tiny()
    context = torch.randn(1, 16, 32)
    frame0, exit_x, refresh_x = (torch.randn(1, 1, 16, H, W) for _ in range(3))
    cache, values = model.new_cache(1, max_frames=2), model.new_cache(1, max_frames=2)
    with torch.no_grad():
        for c in (cache, values):
            model(frame0, torch.tensor([0.0]), context, cache=c, start_frame=0)
    out = model(exit_x, torch.tensor([500.0]), context, cache=cache, start_frame=1)
    with torch.no_grad():
        for c in (cache, values):
            model(refresh_x, torch.tensor([0.0]), context, cache=c, start_frame=1)
    n = cache.frame_tokens
    weight = model.blocks[0].self_attn.k.weight
    torch.testing.assert_close(cache.k[0].detach(), values.k[0], rtol=0, atol=0)
    (g0,) = torch.autograd.grad(cache.k[0][:, :n].sum(), weight, retain_graph=True, allow_unused=True)
    (g1,) = torch.autograd.grad(cache.k[0][:, n:].sum(), weight, retain_graph=True)
    assert (g0 is None or not g0.any()) and g1.abs().max() > 0
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.blocks[0].self_attn.k.parameters())


def test_gradient_checkpointing_gives_same_gradients():
    model = random_tiny().train()
    x, t, c = torch.randn(1, 2, 16, H, W), torch.tensor([400.0]), torch.randn(1, 16, 32)
    model(x, t, c, causal=True).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, t, c, causal=True).square().mean().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, model.parameters()))


def test_x0_head_returns_the_flow_its_clean_latent_implies():
    """prediction="x0": the same weights, the head's output read as x0 and returned as flow; sigma floored at
    X0_MIN_SIGMA so a clean-frame (t = 0) call stays finite; the KV cache still equals the full forward."""
    from causvid.flow import flow_to_x0
    from causvid.models.wan.dit import X0_MIN_SIGMA

    flow_model = random_tiny()
    x0_model = random_tiny(prediction="x0")
    x0_model.load_state_dict(flow_model.state_dict())
    x, context = torch.randn(2, 3, 16, H, W), torch.randn(2, 16, 32)
    t = torch.tensor([[900.0, 500.0, 60.0], [250.0, 0.0, 30.0]])
    with torch.no_grad():
        head = flow_model(x, t, context)  # what the shared head computes, read as a clean latent
        flow = x0_model(x, t, context)
    sigma = (t / 1000).clamp(min=X0_MIN_SIGMA)[:, :, None, None, None]
    torch.testing.assert_close(flow, (x - head) / sigma, rtol=1e-5, atol=1e-5)
    big = t >= 1000 * X0_MIN_SIGMA
    torch.testing.assert_close(flow_to_x0(flow, x, t)[big], head[big], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(flow).all()
    assert rollout_vs_full(x0_model, 3, num_blocks=2) <= 1e-5
    with pytest.raises(ValueError, match="prediction='eps'"):
        random_tiny(prediction="eps")


def test_bf16_model_runs_and_matches_fp32():
    """A model cast to bf16 (the GPU inference default) runs, its fp32 LayerNorm taking the bf16 affine weights
    of the cross-attention norm, and agrees with the fp32 model to bf16 precision, cached and uncached."""
    model = random_tiny()
    half = random_tiny()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    x, t, c = torch.randn(1, 2, 16, H, W), torch.tensor([700.0]), torch.randn(1, 16, 32)
    with torch.no_grad():
        ref = model(x, t, c, causal=True)
        out = half(x.bfloat16(), t, c.bfloat16(), causal=True)
        cached = half(x[:, :1].bfloat16(), t, c.bfloat16(), cache=half.new_cache(1, max_frames=2), start_frame=0)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2
    assert ((cached.float() - ref[:, :1]).norm() / ref[:, :1].norm()).item() < 2e-2
