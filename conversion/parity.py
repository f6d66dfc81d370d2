"""Forward parity of converted PaliGemma weights: transformers (torch) vs our Flax modules, fp32.

The torch side is an independent implementation (transformers' PaliGemma) loaded with the FOREIGN
tensors; our side runs `SiglipEncoder` and the understanding expert of `ExpertStack` (+ `Embedder`)
with the converted params, precision "parity".
"""

import jax.numpy as jnp
import numpy as np

from f1_jax.models import masks
from f1_jax.models.f1 import F1Config
from f1_jax.models.gemma import Embedder, ExpertStack
from f1_jax.models.precision import get_precision
from f1_jax.models.siglip import SiglipEncoder

# Foreign name prefixes -> transformers >= 4.52 PaliGemmaForConditionalGeneration names.
_TO_HF = (("model.paligemma_with_expert.paligemma.", ""), ("paligemma_with_expert.paligemma.", ""))
_OLD_TO_NEW = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def hf_paligemma_config(config: F1Config):
    """A transformers PaliGemmaConfig with our SigLIP + understanding-expert sizes."""
    import transformers  # deferred: transformers is a test dependency: verify --forward only

    s, u = config.siglip, config.und
    return transformers.PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=s.width,
            intermediate_size=s.mlp_dim,
            num_hidden_layers=s.depth,
            num_attention_heads=s.num_heads,
            image_size=s.image_size,
            patch_size=s.patch_size,
            layer_norm_eps=s.eps,
            vision_use_head=False,
            hidden_act="gelu_pytorch_tanh",
            projection_dim=u.width,
        ),
        text_config=dict(
            model_type="gemma",
            hidden_size=u.width,
            intermediate_size=u.mlp_dim,
            num_hidden_layers=u.depth,
            num_attention_heads=u.num_heads,
            num_key_value_heads=u.num_kv_heads,
            head_dim=u.head_dim,
            vocab_size=config.vocab_size,
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
        ),
        projection_dim=u.width,
        hidden_size=u.width,
        image_token_index=config.vocab_size - 1,
        vocab_size=config.vocab_size,
        attn_implementation="eager",
    )


def hf_name(foreign: str) -> str | None:
    """A foreign PaliGemma tensor name (F1, pi0 or HF, any layout) -> today's transformers name."""
    for old, new in _TO_HF:
        if foreign.startswith(old):
            foreign = new + foreign[len(old) :]
            break
    foreign = foreign.replace("vision_tower.vision_model.", "vision_tower.")  # transformers 5
    for old, new in _OLD_TO_NEW:
        if foreign.startswith(old):
            return new + foreign[len(old) :]
    if foreign.startswith(
        ("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.", "lm_head.")
    ):
        return foreign
    return None


def hf_paligemma(config: F1Config, source):
    """transformers PaliGemma (fp32, eval) holding the foreign tensors of `source`."""
    import torch  # deferred: torch and transformers: verify --forward only
    import transformers  # deferred: as above

    model = transformers.PaliGemmaForConditionalGeneration(hf_paligemma_config(config)).eval()
    wanted = model.state_dict()
    state = {}
    for key in source.keys():
        name = hf_name(key)
        if name in wanted:
            value = np.asarray(source.get(key)).astype(np.float32)
            state[name] = torch.from_numpy(value[: wanted[name].shape[0]].copy())
    if "model.language_model.embed_tokens.weight" not in state and "lm_head.weight" in state:
        state["model.language_model.embed_tokens.weight"] = state["lm_head.weight"]
    missing = [k for k in wanted if k not in state and k != "lm_head.weight"]
    if missing:
        raise ValueError(f"PaliGemma tensors missing for the transformers model: {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return model


def forward_parity(
    config: F1Config, params: dict, model, seed: int = 0, num_tokens: int = 7
) -> dict[str, float]:
    """Relative max error of image features and text hidden states, ours vs transformers.

    Args:
      params: our tree (`params` level) holding siglip, embedder and the und expert.
    """
    import torch  # deferred: torch: verify --forward only

    rng = np.random.RandomState(seed)
    s, u = config.siglip, config.und
    images = rng.uniform(-1, 1, (2, s.image_size, s.image_size, 3)).astype(np.float32)
    tokens = rng.randint(0, config.vocab_size, (2, num_tokens)).astype(np.int64)
    with torch.no_grad():
        inner = model.model
        hidden = inner.vision_tower(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
        ref_img = inner.multi_modal_projector(hidden.last_hidden_state).numpy()
        ref_txt = inner.language_model(input_ids=torch.from_numpy(tokens)).last_hidden_state.numpy()

    precision = get_precision("parity")
    got_img = np.asarray(SiglipEncoder(s, precision).apply({"params": params["siglip"]}, images))
    embedded = Embedder(config.vocab_size, u.width).apply(
        {"params": params["embedder"]}, jnp.asarray(tokens, jnp.int32)
    )
    stack = {
        "layers": {"und": params["stack"]["layers"]["und"]},
        "final_norm_und": params["stack"]["final_norm_und"],
    }
    pad = jnp.ones(tokens.shape, bool)
    causal = jnp.tril(jnp.ones((num_tokens, num_tokens), bool))[None].repeat(2, 0)
    (got_txt,), _ = ExpertStack((u,), precision).apply(
        {"params": stack}, [embedded], masks.positions_from_pad(pad), causal
    )
    rel = lambda a, b: float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())
    return {"image_features": rel(got_img, ref_img), "text_hidden": rel(got_txt, ref_txt)}
