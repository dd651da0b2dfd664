"""MaskCLIP dense features: shapes, agreement with the pooled embedding where
they must agree, positional-embedding resizing, gated blocks on the dense path."""
from __future__ import annotations

import copy

import pytest
import torch

from downstream.tasks.dense import dense_features, dense_outputs
from react.errors import ReactError


def _uniform_tokens_model(tiny_model):
    """A copy of the tiny CLIP whose tokens are all equal for a uniform image:
    no positional embedding and a class token equal to the patch embedding."""
    model = copy.deepcopy(tiny_model.model).eval()
    visual = model.visual
    with torch.no_grad():
        visual.positional_embedding.zero_()
        image = torch.full((1, 3, 32, 32), 0.3)
        patch_token = visual.conv1(image)[0, :, 0, 0]
        visual.class_embedding.copy_(patch_token)
    return model, image


def test_shapes_and_normalization(tiny_model):
    images = torch.randn(2, 3, 32, 32)
    feats = dense_features(tiny_model, images)
    assert feats.shape == (2, 2, 2, 32)  # 32 px / 16 px patches, embed_dim 32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 2, 2), atol=1e-5)
    out = dense_outputs(tiny_model.model, images, with_keys=True)
    assert out.keys.shape == (2, 2, 2, 32)  # tower width 32
    assert torch.equal(out.features, feats)


def test_larger_and_non_square_inputs_interpolate_positions(tiny_model):
    feats = dense_features(tiny_model, torch.randn(1, 3, 64, 48))
    assert feats.shape == (1, 4, 3, 32)
    assert torch.isfinite(feats).all()


def test_equal_tokens_give_the_pooled_embedding_exactly(tiny_model):
    # With every token equal, attention is the identity on values, so the
    # MaskCLIP value path computes what the pooled class token computes.
    model, image = _uniform_tokens_model(tiny_model)
    pooled = torch.nn.functional.normalize(model.encode_image(image).float(), dim=-1)[0]
    dense = dense_features(model, image)[0]
    assert torch.allclose(dense, pooled.expand_as(dense), atol=1e-5)
    # and at a larger input size, where positions are resized
    big = torch.full((1, 3, 64, 64), 0.3)
    assert torch.allclose(dense_features(model, big)[0], pooled.expand(4, 4, -1), atol=1e-5)


def test_one_patch_image_gives_the_global_class_ranking(tiny_model):
    # A one-patch input (image size = patch size; positions resized to a 1x1
    # grid) of a model whose tokens start equal: the patch's feature ranks
    # classes as the model's global embedding of the same scene does.
    model, image = _uniform_tokens_model(tiny_model)
    texts = torch.nn.functional.normalize(torch.randn(20, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    pooled = torch.nn.functional.normalize(model.encode_image(image).float(), dim=-1)
    dense = dense_features(model, torch.full((1, 3, 16, 16), 0.3)).reshape(1, -1)
    assert torch.equal((pooled @ texts.T).argsort(descending=True), (dense @ texts.T).argsort(descending=True))
    assert torch.allclose(pooled @ texts.T, dense @ texts.T, atol=1e-5)


def test_value_mode_differs_and_is_normalized(tiny_model):
    images = torch.randn(1, 3, 32, 32)
    value = dense_features(tiny_model, images, mode="value")
    assert value.shape == (1, 2, 2, 32)
    assert not torch.allclose(value, dense_features(tiny_model, images))
    with pytest.raises(ReactError, match="unknown mode"):
        dense_features(tiny_model, images, mode="qk")


def test_tokens_mode_is_the_towers_own_output_tokens(tiny_model):
    visual = copy.deepcopy(tiny_model.model.visual).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(images)
    own = torch.nn.functional.normalize(tokens @ visual.proj, dim=-1).reshape(2, 2, 2, -1)
    assert torch.allclose(dense_features(visual, images, mode="tokens"), own, atol=1e-5)
    assert not torch.allclose(dense_features(visual, images, mode="tokens"), dense_features(visual, images))


def test_gated_blocks_apply_on_the_dense_path(tiny_model):
    from customize.gated import gated_blocks, insert_gated_blocks

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = dense_features(tiny_model, images)
    grown = copy.deepcopy(tiny_model.model).eval()
    torch.manual_seed(0)
    insert_gated_blocks(grown, [0])  # the tiny tower's only (and so last) block
    assert torch.allclose(dense_features(grown, images), base, atol=1e-6)  # alpha = 0: identity
    with torch.no_grad():
        for block in gated_blocks(grown).values():
            block.attn_gate.fill_(0.5)
            block.mlp_gate.fill_(0.5)
    opened = dense_features(grown, images)
    assert (opened - base).abs().max() > 1e-3
    # tokens mode runs the last block itself: its gated block must apply once, as in the tower's forward
    grown.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = grown.visual(images)
    grown.visual.output_tokens = False
    own = torch.nn.functional.normalize(tokens @ grown.visual.proj, dim=-1).reshape(2, 2, 2, -1)
    assert torch.allclose(dense_features(grown, images, mode="tokens"), own, atol=1e-5)


def test_unsupported_towers_and_bad_input(tiny_model):
    import open_clip

    with pytest.raises(ReactError, match="VisionTransformer"):
        dense_features(torch.nn.Linear(2, 2), torch.randn(1, 3, 32, 32))
    coca_like = copy.deepcopy(tiny_model.model)
    coca_like.visual.attn_pool = open_clip.transformer.AttentionalPooler(32, 32, n_head=2, n_queries=4)
    with pytest.raises(ReactError, match="attentional pooling"):
        dense_features(coca_like, torch.randn(1, 3, 32, 32))
    with pytest.raises(ReactError, match="smaller than one"):
        dense_features(tiny_model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ReactError, match=r"\[B, 3, H, W\]"):
        dense_features(tiny_model, torch.randn(3, 32, 32))


def test_patch_dropout_is_not_applied(tiny_model):
    from open_clip.transformer import PatchDropout

    model = copy.deepcopy(tiny_model.model)
    model.visual.patch_dropout = PatchDropout(0.5)
    model.train()
    images = torch.randn(1, 3, 32, 32)
    assert torch.allclose(dense_features(model, images), dense_features(tiny_model, images), atol=1e-6)
