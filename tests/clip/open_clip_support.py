"""A tiny random-weight open_clip CLIP built from a custom config, and the Hugging Face
``CLIPModel`` with the same weights (the mapping is written out here, key by key)."""

from __future__ import annotations

import open_clip
import torch
import transformers

EMBED_DIM = 16
WIDTH = 32
HEADS = 2
LAYERS = 2
IMAGE_SIZE = 32
PATCH_SIZE = 8
CONTEXT = 77
VOCABULARY = 49408  # open_clip's BPE vocabulary (its tokenizer is used)
START_OF_TEXT, END_OF_TEXT = 49406, 49407

# An open_clip model config (the layout of open_clip's model_configs/*.json); head_width = WIDTH // HEADS.
TINY_CONFIG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "width": WIDTH, "layers": LAYERS, "head_width": WIDTH // HEADS},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCABULARY, "width": WIDTH, "heads": HEADS, "layers": LAYERS},
}


def tiny_open_clip(seed: int = 0) -> torch.nn.Module:
    """The tiny open_clip ``CLIP`` of :data:`TINY_CONFIG` in eval mode (layer norms and biases
    perturbed so that they matter, logit scale 2)."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        TINY_CONFIG["embed_dim"],
        open_clip.CLIPVisionCfg(**TINY_CONFIG["vision_cfg"]),
        open_clip.CLIPTextCfg(**TINY_CONFIG["text_cfg"]),
    ).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                parameter.add_(torch.randn_like(parameter) * 0.2)
            elif name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.05)
        model.logit_scale.fill_(2.0)
    return model


def _hf_config() -> transformers.CLIPConfig:
    shared = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  hidden_act="gelu", layer_norm_eps=1e-5)
    text = dict(shared, vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, bos_token_id=START_OF_TEXT,
                eos_token_id=END_OF_TEXT, pad_token_id=0)
    vision = dict(shared, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED_DIM)


def _blocks(state: dict[str, torch.Tensor], open_clip_blocks: str, hf_blocks: str) -> dict[str, torch.Tensor]:
    """Every ``ResidualAttentionBlock``: the fused ``in_proj`` split into q, k, v, the rest renamed."""
    parts = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    mapped: dict[str, torch.Tensor] = {}
    for index in range(LAYERS):
        source, target = f"{open_clip_blocks}.{index}", f"{hf_blocks}.{index}"
        for kind in ("weight", "bias"):
            query, key, value = state[f"{source}.attn.in_proj_{kind}"].chunk(3, dim=0)
            mapped.update({
                f"{target}.self_attn.q_proj.{kind}": query,
                f"{target}.self_attn.k_proj.{kind}": key,
                f"{target}.self_attn.v_proj.{kind}": value,
            })
            for open_clip_part, hf_part in parts.items():
                mapped[f"{target}.{hf_part}.{kind}"] = state[f"{source}.{open_clip_part}.{kind}"]
    return mapped


def hf_clip_twin(model: torch.nn.Module) -> transformers.CLIPModel:
    """The Hugging Face ``CLIPModel`` with the weights of the tiny open_clip ``model``."""
    state = model.state_dict()
    mapped = {
        **_blocks(state, "visual.transformer.resblocks", "vision_model.encoder.layers"),
        **_blocks(state, "transformer.resblocks", "text_model.encoder.layers"),
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"],
    }
    for open_clip_norm, hf_norm in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                                    ("ln_final", "text_model.final_layer_norm")):
        for kind in ("weight", "bias"):
            mapped[f"{hf_norm}.{kind}"] = state[f"{open_clip_norm}.{kind}"]
    hf = transformers.CLIPModel(_hf_config())
    result = hf.load_state_dict(mapped, strict=False)
    unused = {key for key in result.missing_keys if not key.endswith("position_ids")}
    assert not unused and not result.unexpected_keys, result
    return hf.eval()
