"""Pieces of the sharded loader (ptdpo.models.sharded) that need no process group; loading into real
FSDP2 shards on 2 ranks is checked by tests/test_fsdp.py."""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.models.loading import PolicyLoadError
from ptdpo.models.sharded import load_shards_from_safetensors, meta_parameters, shard_rows


@pytest.mark.parametrize("n", [0, 1, 5, 8, 2549])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_rows_split_like_torch_chunk(n, world):
    """FSDP2's Shard(0) follows torch.chunk: equal chunks of ceil(n / world) rows, trailing ranks shorter
    or empty."""
    chunks = torch.arange(n).chunk(world) if n else ()
    for rank in range(world):
        start, stop = shard_rows(n, world, rank)
        expected = chunks[rank].tolist() if rank < len(chunks) else []
        assert list(range(start, stop)) == expected


def test_meta_parameters_keep_real_buffers(tiny_policy):
    """Parameters are built without storage; buffers (rotary frequencies) are computed as usual."""
    from transformers import Qwen3VLForConditionalGeneration

    with meta_parameters():
        skeleton = Qwen3VLForConditionalGeneration(tiny_policy[0].config)
    assert all(p.is_meta for p in skeleton.parameters())
    real = dict(tiny_policy[0].named_buffers())
    buffers = dict(skeleton.named_buffers())
    assert buffers.keys() == real.keys() and buffers
    assert all(not b.is_meta and torch.equal(b, real[n]) for n, b in buffers.items())
    assert not any(p.is_meta for p in torch.nn.Linear(2, 2).parameters())  # the patch ends with the block
    # tied weights stay tied (the Qwen3-VL 2B/4B checkpoints tie the LM head to the embeddings)
    config = copy.deepcopy(tiny_policy[0].config)
    config.tie_word_embeddings = config.get_text_config().tie_word_embeddings = True
    with meta_parameters():
        tied = Qwen3VLForConditionalGeneration(config)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight


def test_loading_from_safetensors_fills_every_tensor_and_names_mismatches(tmp_path, tiny_policy):
    from ptdpo.models import save_policy
    from ptdpo.models.tiny import build_tiny_qwen3vl

    folder = tmp_path / "policy"
    save_policy(copy.deepcopy(tiny_policy[0]), tiny_policy[1], folder)
    target = build_tiny_qwen3vl("0.5m", seed=5)[0]  # same architecture, other weights
    load_shards_from_safetensors(target, folder)
    for (n, p), (_, q) in zip(target.state_dict().items(), tiny_policy[0].state_dict().items()):
        assert torch.equal(p, q), n
    other = build_tiny_qwen3vl("1m")[0]
    with pytest.raises(PolicyLoadError, match="checkpoint shape"):
        load_shards_from_safetensors(other, folder)
