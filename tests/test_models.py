"""Tiny Qwen3-VL policies, the loader, and the multimodal batch / sampling / forward API."""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.data.schema import Item
from ptdpo.models.loading import PolicyLoadError, load_policy, policy_fingerprint, save_policy
from ptdpo.models.multimodal import (
    completion_hidden_states,
    completion_logits,
    completion_logprobs,
    encode_prompts,
    generate_completions,
    get_lm_head,
    infer_images_per_sample,
    repeat_interleave_prompts,
    select_prompts,
    trim_completions,
)
from ptdpo.models.tiny import TINY_SIZES, build_tiny_qwen3vl, count_parameters, tiny_config
from ptdpo.models.tokenizer import VISION_SPECIAL_TOKENS
from ptdpo.prompts import build_messages

ITEMS = [
    Item(id="one", images=["a"], question="How many red cubes are there?", answer="3"),
    Item(
        id="two",
        images=["a", "b"],
        question="Which image has more spheres?",
        answer="A",
        choices=["first", "second"],
    ),
    Item(id="none", images=[], question="What is 2 + 3?", answer="5"),
]
HINT = (
    "Hint:\nRegions:\n- [10, 20, 300, 400] red cube: count the cubes left of it.\nSteps:\n1. Count carefully."
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on this shared 2-core machine, 2 threads under contention make tiny-model
    generate 10-50x slower (spin-waiting); restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts(make_image):
    """Messages and images of 3 prompts with 1, 2 (different sizes) and 0 images."""
    images = [[make_image(64, 64, 1)], [make_image(112, 112, 2), make_image(96, 64, 3)], []]
    return [build_messages(it) for it in ITEMS], images


@pytest.fixture(scope="module")
def batch(tiny_processor, prompts):
    return encode_prompts(tiny_processor, *prompts)


@pytest.fixture(scope="module")
def completions(tiny_model, tiny_processor, batch):
    return generate_completions(tiny_model, tiny_processor, batch, max_new_tokens=12, seed=7)


def unpadded_row(batch, i):
    """Prompt i alone, without left padding."""
    one = select_prompts(batch, [i])
    n = int(one["attention_mask"].sum())
    return {**one, **{k: one[k][:, -n:] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}}


# ------------------------------------------------------------------------------------------------ tiny


def test_named_sizes_have_nominal_parameter_counts():
    from transformers import Qwen3VLForConditionalGeneration

    for name, spec in TINY_SIZES.items():
        if name == "50m":
            with torch.device("meta"):  # counted without allocating; built for real in the slow test
                n = count_parameters(Qwen3VLForConditionalGeneration(tiny_config(name)))
        else:
            n = count_parameters(build_tiny_qwen3vl(name)[0])
        assert abs(n - spec.nominal_params) <= 0.3 * spec.nominal_params, (name, n)


@pytest.mark.slow
def test_50m_builds_and_runs(make_image, prompts):
    model, processor = build_tiny_qwen3vl("50m")
    assert abs(count_parameters(model) - 50e6) <= 0.3 * 50e6
    b = encode_prompts(processor, prompts[0][:1], prompts[1][:1])
    c = generate_completions(model, processor, b, max_new_tokens=3, seed=0)
    assert c.ids.shape[0] == 1 and torch.isfinite(completion_logits(model, b, c.ids, c.mask)).all()


def test_config_agrees_with_tokenizer(tiny_model, tiny_processor):
    cfg, tok = tiny_model.config, tiny_processor.tokenizer
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    rope = cfg.text_config.rope_parameters
    assert sum(rope["mrope_section"]) == cfg.text_config.head_dim // 2
    assert max(cfg.vision_config.deepstack_visual_indexes) < cfg.vision_config.depth
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size


def test_same_seed_same_weights_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, _ = build_tiny_qwen3vl("0.5m", seed=1)
    b, _ = build_tiny_qwen3vl("0.5m", seed=1)
    c, _ = build_tiny_qwen3vl("0.5m", seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert policy_fingerprint(a) == policy_fingerprint(b) != policy_fingerprint(c)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_lm_head_is_untied_linear(tiny_model):
    head = get_lm_head(tiny_model)
    assert head is tiny_model.lm_head and isinstance(head, torch.nn.Linear)
    emb = tiny_model.get_input_embeddings().weight
    assert head.weight.shape == emb.shape and head.weight.data_ptr() != emb.data_ptr()


# ------------------------------------------------------------------------------------------------ batches


def test_encode_prompts_layout(batch, tiny_processor):
    assert batch["images_per_sample"] == [1, 2, 0]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 8, 8], [1, 4, 6]]
    assert batch["pixel_values"].shape[0] == 16 + 64 + 24
    am = batch["attention_mask"]
    assert am[:, -1].all() and not am[:, 0].all()  # left padded
    pad = tiny_processor.tokenizer.pad_token_id
    assert (batch["input_ids"][am == 0] == pad).all()
    image_id = tiny_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [4, 16 + 6, 0]
    assert batch["mm_token_type_ids"].eq(1).equal(batch["input_ids"].eq(image_id))


def test_encode_prompts_checks_image_counts(tiny_processor, prompts):
    msgs, images = prompts
    with pytest.raises(ValueError, match="prompt 0"):
        encode_prompts(tiny_processor, msgs[:1], [[]])


def test_thinking_prompt(tiny_processor, prompts):
    msgs, images = prompts
    b = encode_prompts(tiny_processor, msgs[2:], images[2:], enable_thinking=True)
    tail = tiny_processor.tokenizer.decode(b["input_ids"][0, -8:])
    assert tail.endswith("<|im_start|>assistant\n<think>\n")


def test_select_and_repeat_move_image_blocks(batch):
    rep = repeat_interleave_prompts(batch, 3)
    assert rep["images_per_sample"] == [1, 1, 1, 2, 2, 2, 0, 0, 0]
    assert rep["input_ids"].equal(batch["input_ids"].repeat_interleave(3, 0))
    grids = batch["image_grid_thw"]
    assert rep["image_grid_thw"].equal(torch.cat([grids[:1]] * 3 + [grids[1:3]] * 3))
    pv = batch["pixel_values"]
    blocks = [pv[:16], pv[16:104]]  # sample 0: 16 patches; sample 1: 64 + 24
    assert rep["pixel_values"].equal(torch.cat([blocks[0]] * 3 + [blocks[1]] * 3))
    rev = select_prompts(batch, [2, 1, 0])
    assert rev["images_per_sample"] == [0, 2, 1]
    assert rev["pixel_values"].equal(torch.cat([blocks[1], blocks[0]]))
    none = select_prompts(batch, [2, 2])
    assert none["pixel_values"] is None and none["image_grid_thw"] is None
    # a batch collated elsewhere, without images_per_sample: inferred from mm_token_type_ids
    bare = {k: v for k, v in batch.items() if k != "images_per_sample"}
    assert infer_images_per_sample(bare) == [1, 2, 0]
    assert select_prompts(bare, [2, 1, 0])["pixel_values"].equal(rev["pixel_values"])


def test_repeated_batch_forward_equals_originals(tiny_model, batch, completions):
    n = 2
    rep = repeat_interleave_prompts(batch, n)
    ids, mask = completions.ids.repeat_interleave(n, 0), completions.mask.repeat_interleave(n, 0)
    with torch.no_grad():
        h = completion_hidden_states(tiny_model, batch, completions.ids, completions.mask)
        hr = completion_hidden_states(tiny_model, rep, ids, mask)
    m = mask.bool()
    torch.testing.assert_close(hr[m], h.repeat_interleave(n, 0)[m], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ sampling


def test_generate_completions(tiny_model, tiny_processor, batch, completions):
    c = completions
    tok = tiny_processor.tokenizer
    B = batch["input_ids"].shape[0]
    assert c.ids.shape == c.mask.shape and c.ids.shape[0] == B and c.ids.shape[1] <= 12
    assert c.lengths.tolist() == c.mask.sum(1).tolist()
    assert (c.ids[c.mask == 0] == tok.pad_token_id).all()
    assert all(c.mask[i, : int(n)].all() for i, n in enumerate(c.lengths))
    vision_ids = set(tok.convert_tokens_to_ids(VISION_SPECIAL_TOKENS))
    assert not vision_ids & set(c.ids[c.mask.bool()].tolist())
    assert len(c.texts) == B and all(isinstance(t, str) and t for t in c.texts)
    for i in range(B):
        assert c.texts[i] == tok.decode(c.ids[i, : int(c.lengths[i])], skip_special_tokens=True)
    # same seed -> same completions; the global RNG is not touched
    state = torch.random.get_rng_state()
    again = generate_completions(tiny_model, tiny_processor, batch, max_new_tokens=12, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert again.ids.equal(c.ids) and again.texts == c.texts
    other = generate_completions(tiny_model, tiny_processor, batch, max_new_tokens=12, seed=8)
    assert not (other.ids.shape == c.ids.shape and other.ids.equal(c.ids))
    greedy = [generate_completions(tiny_model, tiny_processor, batch, 6, do_sample=False) for _ in range(2)]
    assert greedy[0].ids.equal(greedy[1].ids)
    nucleus = generate_completions(tiny_model, tiny_processor, batch, 6, temperature=0.7, top_p=0.9, seed=0)
    assert nucleus.ids.shape[0] == B


def test_vision_tokens_are_suppressed(tiny_model, tiny_processor, batch):
    # leave only the vision tokens and one ordinary token: if suppression failed, vision tokens would win
    tok = tiny_processor.tokenizer
    vision_ids = tok.convert_tokens_to_ids(VISION_SPECIAL_TOKENS)
    allowed = set(vision_ids) | {tok.convert_tokens_to_ids("Ġthe")}
    others = [i for i in range(len(tok)) if i not in allowed]
    c = generate_completions(tiny_model, tiny_processor, batch, 6, seed=0, suppress_token_ids=others)
    assert set(c.ids.flatten().tolist()) == {tok.convert_tokens_to_ids("Ġthe")}
    assert c.truncated.all() and (c.lengths == 6).all()


def test_eos_ends_completion_and_masks_the_rest(tiny_model, tiny_processor, batch):
    tok = tiny_processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    keep = {eos, tok.convert_tokens_to_ids("Ġred"), tok.convert_tokens_to_ids("Ġcube")}
    others = [i for i in range(len(tok)) if i not in keep]
    big = repeat_interleave_prompts(batch, 4)
    c = generate_completions(tiny_model, tiny_processor, big, 16, seed=3, suppress_token_ids=others)
    finished = ~c.truncated
    assert finished.any()  # P(no eos in 12 rows x 16 steps) is about 1e-9
    for i in range(c.ids.shape[0]):
        n = int(c.lengths[i])
        row = c.ids[i, :n].tolist()
        assert (row[-1] == eos) == bool(finished[i]) and eos not in row[:-1]
        assert c.mask[i, :n].all() and not c.mask[i, n:].any()
        assert (c.ids[i, n:] == tok.pad_token_id).all()
        assert bool(c.truncated[i]) == (n == 16 and row[-1] != eos)
        assert "<|im_end|>" not in c.texts[i]


def test_trim_completions():
    eos, pad = [9, 8], 0
    gen = torch.tensor([[5, 9, 5, 5], [5, 5, 5, 5], [8, 0, 0, 0], [5, 5, 5, 9]])
    ids, mask, lengths, truncated = trim_completions(gen, eos, pad)
    assert lengths.tolist() == [2, 4, 1, 4]
    assert truncated.tolist() == [False, True, False, False]
    assert ids.tolist() == [[5, 9, 0, 0], [5, 5, 5, 5], [8, 0, 0, 0], [5, 5, 5, 9]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    ids, mask, lengths, _ = trim_completions(torch.tensor([[9, 1, 1], [1, 9, 1]]), eos, pad)
    assert ids.shape == (2, 2) and lengths.tolist() == [1, 2]  # columns past the longest row dropped


@pytest.mark.parametrize("with_images", [True, False])
def test_generation_logits_equal_completion_forward(tiny_model, tiny_processor, prompts, batch, with_images):
    """The training forward reproduces the sampler's own next-token logits (positions, masks, images),
    also for a left-padded batch without any image (where Qwen3-VL would not build M-RoPE positions)."""
    if not with_images:
        short = [{"role": "user", "content": "Count."}]
        batch = encode_prompts(tiny_processor, [prompts[0][2], short], None)
        assert batch["pixel_values"] is None and not batch["attention_mask"][:, 0].all()
    c = generate_completions(tiny_model, tiny_processor, batch, 8, seed=1, output_logits=True)
    with torch.no_grad():
        logits = completion_logits(tiny_model, batch, c.ids, c.mask)
    m = c.mask.bool()
    torch.testing.assert_close(logits[m], c.logits[m], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ forward


def test_padded_batch_equals_per_sample(tiny_model, batch, completions):
    c = completions
    with torch.no_grad():
        h = completion_hidden_states(tiny_model, batch, c.ids, c.mask)
        assert h.shape == (*c.ids.shape, tiny_model.config.text_config.hidden_size)
        for i in range(c.ids.shape[0]):  # includes the text-only prompt (no image rows)
            n = int(c.lengths[i])
            hi = completion_hidden_states(
                tiny_model, unpadded_row(batch, i), c.ids[i : i + 1, :n], c.mask[i : i + 1, :n]
            )
            torch.testing.assert_close(h[i, :n], hi[0], atol=1e-5, rtol=1e-5)


def test_completion_logits_match_plain_model_forward(tiny_model, batch, completions):
    """lm_head(h[:, t]) are the full model's logits at the position before completion token t."""
    c = completions
    i = 1
    one = unpadded_row(batch, i)
    n = int(c.lengths[i])
    ids = torch.cat([one["input_ids"], c.ids[i : i + 1, :n]], 1)
    with torch.no_grad():
        ref = tiny_model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=torch.cat(
                [one["mm_token_type_ids"], torch.zeros_like(c.ids[i : i + 1, :n])], 1
            ),
            pixel_values=one["pixel_values"],
            image_grid_thw=one["image_grid_thw"],
            use_cache=False,
        ).logits
        got = completion_logits(tiny_model, one, c.ids[i : i + 1, :n], c.mask[i : i + 1, :n])
    P = one["input_ids"].shape[1]
    torch.testing.assert_close(got[0], ref[0, P - 1 : P - 1 + n], atol=1e-5, rtol=1e-5)


def test_teacher_prompt_with_hint_aligns_on_completion(
    tiny_model, tiny_processor, prompts, batch, completions
):
    msgs, images = prompts
    teacher_msgs = [build_messages(it, context_block=HINT) for it in ITEMS]
    teacher = encode_prompts(tiny_processor, teacher_msgs, images)
    assert teacher["input_ids"].shape[1] > batch["input_ids"].shape[1]
    # the teacher sees exactly the student's images
    assert teacher["pixel_values"].equal(batch["pixel_values"])
    assert teacher["image_grid_thw"].equal(batch["image_grid_thw"])
    c = completions
    with torch.no_grad():
        ht = completion_hidden_states(tiny_model, teacher, c.ids, c.mask)
        hs = completion_hidden_states(tiny_model, batch, c.ids, c.mask)
        assert ht.shape == hs.shape
        assert not torch.allclose(ht[c.mask.bool()], hs[c.mask.bool()])  # the hint changes the context
        for i in range(c.ids.shape[0]):
            n = int(c.lengths[i])
            ref = completion_hidden_states(
                tiny_model, unpadded_row(teacher, i), c.ids[i : i + 1, :n], c.mask[i : i + 1, :n]
            )
            torch.testing.assert_close(ht[i, :n], ref[0], atol=1e-5, rtol=1e-5)


def test_gradient_step_reaches_vision_tower(tiny_model, tiny_processor, batch, completions):
    model = copy.deepcopy(tiny_model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    c = completions
    lp = completion_logprobs(model, batch, c.ids, c.mask)
    loss = -(lp.sum() / c.mask.sum())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    vision_w = model.model.visual.blocks[0].attn.qkv.weight
    patch_w = model.model.visual.patch_embed.proj.weight
    assert vision_w.grad.abs().sum() > 0 and patch_w.grad.abs().sum() > 0
    before = vision_w.detach().clone()
    opt.step()
    assert not torch.equal(before, vision_w.detach())
    with torch.no_grad():
        after = -(completion_logprobs(model, batch, c.ids, c.mask).sum() / c.mask.sum())
    assert after < loss.detach()


def test_gradient_checkpointing_gives_same_gradients(tiny_model, batch, completions):
    c = completions
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(tiny_model).train()
        if checkpointing:
            enable = (
                getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            )
            enable()
            assert model.model.language_model.gradient_checkpointing
        completion_logprobs(model, batch, c.ids, c.mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ loading


def test_save_and_reload_identical(tiny_model, tiny_processor, prompts, batch, completions, tmp_path):
    from transformers import AutoProcessor

    from ptdpo.models.processor import Qwen3VLImageProcessor

    save_policy(tiny_model, tiny_processor, tmp_path / "policy")
    model, processor = load_policy(str(tmp_path / "policy"))
    assert isinstance(processor, Qwen3VLImageProcessor)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "policy"), Qwen3VLImageProcessor)
    assert policy_fingerprint(model) == policy_fingerprint(tiny_model)
    c = completions
    with torch.no_grad():
        a = completion_logits(tiny_model, batch, c.ids, c.mask)
        b = completion_logits(model, encode_prompts(processor, *prompts), c.ids, c.mask)
    assert torch.equal(a, b)


def test_load_policy_tiny_specs():
    a, _ = load_policy("tiny:0.5m@3")
    b, _ = build_tiny_qwen3vl("0.5m", seed=3)
    assert policy_fingerprint(a) == policy_fingerprint(b)
    assert policy_fingerprint(load_policy("tiny:0.5m")[0]) == policy_fingerprint(
        build_tiny_qwen3vl("0.5m")[0]
    )
    half, processor = load_policy("tiny:0.5m", dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    b = encode_prompts(processor, [[{"role": "user", "content": "hi"}]])
    c = generate_completions(half, processor, b, 3, seed=0)
    assert completion_hidden_states(half, b, c.ids, c.mask).dtype == torch.bfloat16
    with pytest.raises(PolicyLoadError, match="unknown tiny size"):
        load_policy("tiny:3b")
    with pytest.raises(PolicyLoadError, match="not an integer"):
        load_policy("tiny:0.5m@x")
    with pytest.raises(PolicyLoadError, match="does not exist"):
        load_policy("./no/such/policy")


def test_hub_id_goes_to_from_pretrained(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PolicyLoadError, match="Qwen/Qwen3-VL-2B-Thinking"):
        load_policy("Qwen/Qwen3-VL-2B-Thinking")


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")
def test_wrapped_models_ddp_and_fsdp2(tiny_model, tiny_processor, batch, completions, tmp_path):
    """DDP and FSDP2 (world size 1, gloo): same hidden states and samples as the bare model."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    c = completions
    with torch.no_grad():
        ref = completion_hidden_states(tiny_model, batch, c.ids, c.mask)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(tiny_model))
        fsdp = copy.deepcopy(tiny_model)
        mesh = init_device_mesh("cpu", (1,))
        for layer in [*fsdp.model.language_model.layers, *fsdp.model.visual.blocks]:
            fully_shard(layer, mesh=mesh)
        fully_shard(fsdp, mesh=mesh)
        for wrapped in (ddp, fsdp):
            h = completion_hidden_states(wrapped, batch, c.ids, c.mask)
            torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
            h[c.mask.bool()].sum().backward()
            again = generate_completions(wrapped, tiny_processor, batch, max_new_tokens=12, seed=7)
            assert again.ids.equal(c.ids)
    finally:
        dist.destroy_process_group()
