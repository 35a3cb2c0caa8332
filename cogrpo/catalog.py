"""The project's registries: model backends, rewards (scorers) and benchmarks.

Rewards and benchmarks share the scorer entries: ``--reward NAME`` builds the
scorer, ``--bench NAME`` runs the benchmark suite, which names its scorer.
"""

from __future__ import annotations

from cogrpo.registry import Registry

MODELS = Registry("model")
MODELS.register(
    "shapes",
    "cogrpo.models.shapes:load_shapes_backend",
    description="embedded shapes-world MDM (UVit2DModel + patch VQ, 32 px, 8x8 tokens); weights ship in the package",
    weights="cogrpo/assets/shapes",
    check="cogrpo.models.shapes:weights_available",
)
MODELS.register(
    "amused-256",
    "cogrpo.models.amused:load_amused_256",
    description="aMUSEd 256 (UVit2DModel 603M + VQ-GAN 8192 codes + CLIP-L/14 text), 256 px, 16x16 tokens",
    weights="amused/amused-256 @ 09b6259bf96dbe6d70a852b70812420fe02df55e",
    check="cogrpo.models.amused:weights_available_256",
)
MODELS.register(
    "amused-512",
    "cogrpo.models.amused:load_amused_512",
    description="aMUSEd 512 (UVit2DModel 608M with 2x down/up-sampling + VQ-GAN + CLIP-L/14 text), 512 px, 32x32 tokens",
    weights="amused/amused-512 @ 1ade4d510b58b500dfe820141737322007d17cd8",
    check="cogrpo.models.amused:weights_available_512",
)
MODELS.register(
    "meissonic",
    "cogrpo.models.meissonic:load_meissonic",
    description="Meissonic 1024x1024 MDM (Flux-style MMDiT, 14 dual + 28 single blocks; aMUSEd VQ, 64x64 tokens; CLIP-H)",
    weights="MeissonFlow/Meissonic @ 6e79d28e4b46ba35dd6de05a3d252615c9b88154",
    check="cogrpo.models.meissonic:weights_available",
)

REWARDS = Registry("reward")
REWARDS.register(
    "shapes",
    "cogrpo.rewards.shapes:ShapesReward",
    description="shapes world: GenEval judging with the shapes detector, partial credit in [0, 1]",
    weights="none (rule-based)",
)
REWARDS.register(
    "shapes-strict",
    "cogrpo.rewards.shapes:StrictShapesReward",
    description="shapes world: GenEval judging with the shapes detector, 1 if correct else 0",
    weights="none (rule-based)",
)
REWARDS.register(
    "hps",
    "cogrpo.rewards.hps:HPSScorer",
    aliases=("hpsv2.1",),
    description="HPS v2.1: cosine of OpenCLIP ViT-H-14 image and prompt features (x100 in the benchmark)",
    weights="xswu/HPSv2 HPS_v2.1_compressed.pt",
    spec="cogrpo.rewards.hps:HPS_WEIGHTS",
    spec_key="v2.1",
)
REWARDS.register(
    "hpsv2.0",
    "cogrpo.rewards.hps:HPSv20Scorer",
    description="HPS v2.0 (not comparable with v2.1)",
    weights="xswu/HPSv2 HPS_v2_compressed.pt",
    spec="cogrpo.rewards.hps:HPS_WEIGHTS",
    spec_key="v2.0",
)
REWARDS.register(
    "imagereward",
    "cogrpo.rewards.imagereward:ImageRewardScorer",
    description="ImageReward v1.0: BLIP ViT-L/16 + BERT cross-attention preference reward, standardised to about N(0, 1)",
    weights="THUDM/ImageReward ImageReward.pt",
)
REWARDS.register(
    "clip",
    "cogrpo.rewards.clip_score:CLIPScoreScorer",
    description="CLIPScore max(100 cos, 0) with open_clip ViT-L-14 (openai weights)",
    weights="open_clip ViT-L-14 openai",
)
REWARDS.register(
    "dpg",
    "cogrpo.benchmarks.dpg:DPGScorer",
    description="DPG-Bench: VQA yes/no questions with dependency zeroing over 2x2 grids; official bugs fixed unless legacy",
    weights="VQA model (BLIP by default, not comparable with published numbers; mPLUG optional)",
)
REWARDS.register(
    "geneval",
    "cogrpo.rewards.geneval:GenEvalScorer",
    description="GenEval judging (1 if correct else 0) with Mask2Former (transformers) and the CLIP colour classifier",
    weights="facebook/mask2former-swin-small-coco-instance + open_clip ViT-L-14 openai",
)
REWARDS.register(
    "geneval-partial",
    "cogrpo.rewards.geneval:PartialGenEvalScorer",
    description="GenEval judging with partial credit in [0, 1]: mean of the count, colour, position and exclusion credits",
    weights="facebook/mask2former-swin-small-coco-instance + open_clip ViT-L-14 openai",
)

BENCHMARKS = Registry("benchmark")
BENCHMARKS.register(
    "shapes",
    "cogrpo.evaluation.suites:shapes_suite",
    description="held-out shapes prompts (GenEval format), 4 images each, GenEval judging with the shapes detector",
)
BENCHMARKS.register(
    "geneval",
    "cogrpo.evaluation.suites:geneval_suite",
    description="GenEval (djghosh13/geneval, 553 prompts, 4 images each); --detector mask2former (default, close to "
    "but not identical with official numbers), mmdet (official) or shapes",
)
BENCHMARKS.register(
    "hps",
    "cogrpo.evaluation.official_suites:hps_suite",
    description="HPD v2 benchmark (zhwang/HPDv2, 4 styles x 800 prompts), 1 image each as <style>/<index:05d>.jpg; "
    "HPS v2.1 x 100 per style, overall = mean of the styles",
)
BENCHMARKS.register(
    "imagereward",
    "cogrpo.evaluation.official_suites:imagereward_suite",
    description="ImageReward benchmark (THUDM/ImageReward, 100 DiffusionDB prompts), 10 images each as <id>_<k>.png; "
    "mean over prompts of the mean ImageReward v1.0",
)
BENCHMARKS.register(
    "dpg",
    "cogrpo.evaluation.official_suites:dpg_suite",
    description="DPG-Bench (TencentQQGYLab/ELLA, 1,065 dense prompts), one 2x2 grid of 4 images each as <item_id>.png; "
    "VQA score x 100 overall and per category, official bugs fixed; --vqa blip (default, not comparable with "
    "published numbers) or mplug (official)",
)
BENCHMARKS.register(
    "dpg-legacy",
    "cogrpo.evaluation.official_suites:dpg_legacy_suite",
    description="DPG-Bench scored as the official script does, bugs kept (first CSV row skipped, failures dropped, "
    "categories from the last tile); with --vqa mplug it follows the script behind the published numbers",
)
