"""Configurations and builders of the embedded shapes model's components.

The embedded model's transformer and text encoder are the classes aMUSEd uses
(diffusers ``UVit2DModel``, transformers ``CLIPTextModelWithProjection``), at a
size that pretrains on two CPU cores. Its image tokenizer is a patch-local VQ
(``cogrpo.models.patch_vq.PatchVQModel``, ``VQModel``'s interface) matched to the
world's 4-pixel drawing grid. Its text tokenizer is a word-level
``PreTrainedTokenizerFast`` over the world's vocabulary, so it needs no download.
"""

from __future__ import annotations

from pathlib import Path

from cogrpo.benchmarks.geneval import RELATIONS
from cogrpo.world.prompts import NUMBER_WORDS
from cogrpo.world.render import COLORS, IMAGE_SIZE, PLURALS, SHAPES

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes"

CODEBOOK_SIZE = 512
LATENT_CHANNELS = 16
VQ_DOWNSAMPLE = 4
GRID = IMAGE_SIZE // VQ_DOWNSAMPLE  # 8 x 8 tokens per image
MASK_TOKEN_ID = CODEBOOK_SIZE  # vocab_size - 1 of the transformer, as in aMUSEd
TEXT_MAX_LENGTH = 16

VQ_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    patch_size=VQ_DOWNSAMPLE,
    hidden_channels=128,
    latent_channels=LATENT_CHANNELS,
    num_vq_embeddings=CODEBOOK_SIZE,
    sample_size=IMAGE_SIZE,
)

TEXT_HIDDEN = 64
TEXT_CONFIG = dict(
    hidden_size=TEXT_HIDDEN,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=TEXT_MAX_LENGTH,
    projection_dim=TEXT_HIDDEN,
    hidden_act="quick_gelu",
)

TRANSFORMER_CONFIG = dict(
    hidden_size=128,
    use_bias=False,
    hidden_dropout=0.0,
    cond_embed_dim=TEXT_HIDDEN,
    micro_cond_encode_dim=2,
    micro_cond_embed_dim=10,
    encoder_hidden_size=TEXT_HIDDEN,
    vocab_size=CODEBOOK_SIZE + 1,
    codebook_size=CODEBOOK_SIZE,
    in_channels=64,
    block_out_channels=128,
    num_res_blocks=0,
    downsample=False,
    upsample=False,
    block_num_heads=4,
    num_hidden_layers=4,
    num_attention_heads=4,
    attention_dropout=0.0,
    intermediate_size=384,
    layer_norm_eps=1e-06,
    ln_elementwise_affine=True,
    sample_size=GRID,
)


def vocabulary() -> list[str]:
    """Return the word-level vocabulary: special tokens, then every word of the templates."""
    words = {"a", "an", "photo", "of", "and"}
    words |= set(COLORS) | set(SHAPES) | set(PLURALS.values()) | set(NUMBER_WORDS.values())
    for relation in RELATIONS:
        words |= set(relation.split())
    return ["<pad>", "<unk>", "<bos>", "<eos>"] + sorted(words)


def build_tokenizer():
    """Build the word-level text tokenizer (offline, deterministic)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=TEXT_MAX_LENGTH,
    )


def build_vq():
    """Build an untrained VQ tokenizer."""
    from cogrpo.models.patch_vq import PatchVQModel

    return PatchVQModel(**VQ_CONFIG)


def load_vq(folder: str | Path):
    """Load a saved shapes tokenizer: a ``PatchVQModel``, or a diffusers ``VQModel`` from an older pretraining."""
    import json

    from diffusers import VQModel

    from cogrpo.models.patch_vq import PatchVQModel

    config_file = Path(folder) / "config.json"
    class_name = json.loads(config_file.read_text()).get("_class_name") if config_file.is_file() else None
    cls = VQModel if class_name == "VQModel" else PatchVQModel
    return cls.from_pretrained(folder)


def build_text_encoder():
    """Build an untrained CLIP text encoder sized for the world's vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer_vocab = len(vocabulary())
    config = CLIPTextConfig(vocab_size=tokenizer_vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3, **TEXT_CONFIG)
    return CLIPTextModelWithProjection(config)


def build_transformer():
    """Build an untrained UVit2DModel for the 8 x 8 token grid."""
    from diffusers import UVit2DModel

    return UVit2DModel(**TRANSFORMER_CONFIG)
