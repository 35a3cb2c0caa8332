"""Object detectors for GenEval: a common protocol and three backends.

A detector turns RGB uint8 images (H, W, 3) into ``Detection`` lists: GenEval
class name, box (x1, y1, x2, y2) in pixels, score and a boolean mask of the
image's size. The score threshold, the 16-objects-per-class limit and the
judging stay in ``cogrpo.benchmarks.geneval``; a detector only drops
candidates that no GenEval threshold can keep.

Backends:

* ``ShapesDetector``: the shapes-world detector of ``cogrpo.world.detector``.
* ``Mask2FormerDetector``: transformers' ``Mask2FormerForUniversalSegmentation``
  with a COCO instance checkpoint. Its checkpoint is Meta's Mask2Former
  release, not the mmdetection 2.x checkpoint of the official evaluator, so its
  GenEval numbers are close to, but not identical with, published ones.
* ``MMDetDetector``: the official mmdetection Mask2Former, used only when
  ``mmdet`` is importable (optional extra ``geneval-mmdet``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cogrpo.benchmarks.geneval import SCORE_THRESHOLD, Detection
from cogrpo.rewards.base import MissingWeightsError, WeightsSpec
from cogrpo.weight_digests import hub_snapshot_folder

logger = logging.getLogger(__name__)

# GenEval's 80 class names in the order of ``evaluation/object_names.txt``
# (djghosh13/geneval at commit af4902f24d3ca90ebbb446dd9891a59e0f82725f). The
# official evaluator maps mmdetection's class index i to name i of this list.
GENEVAL_OBJECT_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# The COCO 2017 thing classes in contiguous order (detectron2's names), which is
# the ``id2label`` of the facebook/mask2former-swin-*-coco-instance configs.
# NOTE: written from detectron2's COCO metadata, not read from the checkpoint's
# config.json. The loader therefore maps labels by name and warns about any
# label it cannot map.
COCO_ID2LABEL: dict[int, str] = dict(enumerate((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)))

# Label spellings that differ from GenEval's names. The first three are COCO's
# own names; the rest are PASCAL VOC and other common spellings, so checkpoints
# labelled that way map as well.
LABEL_ALIASES: dict[str, str] = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "tvmonitor": "tv",
    "tv monitor": "tv",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "hair dryer": "hair drier",
    "cellphone": "cell phone",
    "doughnut": "donut",
}

DEFAULT_MASK2FORMER_MODEL = "facebook/mask2former-swin-small-coco-instance"
# NOTE: unverified pin. This is the hub commit "Update README.md" of 2023-01-24,
# which comes after the last weights upload. A later commit edits one line of
# preprocessor_config.json, and this revision lacks that edit. This code has not
# yet been run with the weights at this revision.
DEFAULT_MASK2FORMER_REVISION = "f77f179fc62b98f6734481ebbef5bceeb1e7f10b"
# The weights file of that revision, uploaded by the hub commit babc022 of 2023-01-16.
DEFAULT_MASK2FORMER_WEIGHTS = WeightsSpec(
    repo_id=DEFAULT_MASK2FORMER_MODEL,
    filename="pytorch_model.bin",
    revision=DEFAULT_MASK2FORMER_REVISION,
    option="--detector-weights",
)
# The test scale of the official mmdetection pipeline and of Mask2Former's own
# COCO evaluation: shorter side 800, longer side at most 1333.
OFFICIAL_TEST_SIZE: dict[str, int] = {"shortest_edge": 800, "longest_edge": 1333}
# mmdetection's ``max_per_image`` for Mask2Former instance segmentation.
MAX_DETECTIONS_PER_IMAGE = 100

MMDET_CONFIG = "configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"
MMDET_CHECKPOINT_URL = (
    "https://download.openmmlab.com/mmdetection/v2.0/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco/"
    "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth"
)
# A plain URL takes no revision. The file name ends with the first 8 hex digits of the
# file's SHA-256, as OpenMMLab's publish_model script names released checkpoints.
MMDET_WEIGHTS = WeightsSpec(
    repo_id=MMDET_CHECKPOINT_URL.rsplit("/", 1)[0],
    filename=MMDET_CHECKPOINT_URL.rsplit("/", 1)[1],
    revision=None,
    option="--detector-weights",
)
MMDET_EXTRA = "geneval-mmdet"

DETECTOR_NAMES: tuple[str, ...] = ("mask2former", "mmdet", "shapes")


@runtime_checkable
class GenEvalDetector(Protocol):
    """An object detector for GenEval.

    ``detect`` takes RGB uint8 arrays (H, W, 3) and returns one list of
    ``Detection`` per image, with GenEval class names and masks of the image's
    size. ``comparable_with_official`` is True only for the official mmdetection
    model.
    """

    name: str
    comparable_with_official: bool

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]: ...


def to_geneval_name(label: str, names: Sequence[str] = GENEVAL_OBJECT_NAMES) -> str | None:
    """Return the GenEval class name of a detector label, or None when it has none."""
    text = label.strip().lower().replace("_", " ")
    if text in names:
        return text
    alias = LABEL_ALIASES.get(text)
    return alias if alias in names else None


def label_map(id2label: Mapping[int, str], names: Sequence[str] = GENEVAL_OBJECT_NAMES) -> dict[int, str]:
    """Map detector class ids to GenEval names, leaving out labels with no GenEval name."""
    mapped = {}
    for class_id, label in id2label.items():
        name = to_geneval_name(str(label), names)
        if name is not None:
            mapped[int(class_id)] = name
    return mapped


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Return the (N, 4) boxes x1, y1, x2, y2 of (N, H, W) bool masks, as mmdetection's ``mask2bbox``.

    x2 and y2 are one past the last mask pixel. An empty mask gets (0, 0, 0, 0).
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for index, mask in enumerate(masks):
        columns = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        if len(columns) and len(rows):
            boxes[index] = (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)
    return boxes


def _check_images(images: Sequence[np.ndarray]) -> None:
    for index, image in enumerate(images):
        shape = np.shape(image)
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"image {index} has shape {shape}; expected an RGB image of shape (H, W, 3)")


# --------------------------------------------------------------------------- shapes


class ShapesDetector:
    """The shapes-world detector behind the detector protocol.

    It finds circles, squares, triangles and crosses, not COCO objects, so on the
    official prompts every object is missed. It serves the shapes world and
    tests that need no weights.
    """

    name = "shapes"
    comparable_with_official = False
    weights: tuple[WeightsSpec, ...] = ()
    weight_paths: tuple[Path, ...] = ()

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Run the shapes detector on each image."""
        from cogrpo.world.detector import detect

        _check_images(images)
        return [detect(np.asarray(image)) for image in images]


# --------------------------------------------------------------------------- transformers Mask2Former


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def _tf32_disabled() -> Iterator[None]:
    """Run the block with TF32 matmuls and convolutions off, then restore the previous flags.

    A GenEval user reported Mask2Former confidences collapsing on an A100 but
    not on a V100, and TF32 is the likely cause.
    """
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def instance_detections(
    class_logits: Any,
    mask_logits: Any,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    original_size: tuple[int, int],
    labels: Mapping[int, str],
    *,
    max_detections: int = MAX_DETECTIONS_PER_IMAGE,
    score_floor: float = SCORE_THRESHOLD,
) -> list[Detection]:
    """Turn one image's Mask2Former outputs into detections, as mmdetection 2.x does.

    ``class_logits`` is (queries, classes + 1) with "no object" last, and
    ``mask_logits`` is (queries, h, w) over the padded input of size
    ``padded_size``. The steps follow mmdetection's ``MaskFormerFusionHead``:

    1. take the top ``max_detections`` (query, class) pairs by softmax probability;
    2. upsample their mask logits to ``padded_size`` (bilinear);
    3. crop the valid region ``valid_size``, the resized image before padding;
    4. resize to ``original_size`` (bilinear) and binarise at logit 0;
    5. score each pair as class probability times the mean sigmoid inside its mask.

    Boxes come from the masks. Pairs scoring at most ``score_floor`` and classes
    missing from ``labels`` are dropped.
    """
    import torch
    import torch.nn.functional as F

    probabilities = torch.softmax(class_logits.float(), dim=-1)[:, :-1]
    num_classes = probabilities.shape[1]
    flat = probabilities.flatten()
    top_scores, top_indices = flat.topk(min(max_detections, flat.numel()))
    query_indices = torch.div(top_indices, num_classes, rounding_mode="floor")
    class_ids = top_indices % num_classes
    # The final score is at most the class probability, so pairs at or below the
    # floor are dropped before the costly mask upsampling.
    keep = top_scores > score_floor
    if not bool(keep.any()):
        return []
    top_scores, query_indices, class_ids = top_scores[keep], query_indices[keep], class_ids[keep]

    masks = mask_logits.float()[query_indices][None]
    masks = F.interpolate(masks, size=tuple(padded_size), mode="bilinear", align_corners=False)
    masks = masks[..., : valid_size[0], : valid_size[1]]
    masks = F.interpolate(masks, size=original_size, mode="bilinear", align_corners=False)[0]
    binary = masks > 0
    inside = binary.flatten(1).float()
    mask_scores = (masks.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    scores = (top_scores * mask_scores).cpu().numpy()
    binary_masks = binary.cpu().numpy()
    boxes = boxes_from_masks(binary_masks)

    detections = []
    for index, class_id in enumerate(class_ids.tolist()):
        name = labels.get(class_id)
        if name is None or scores[index] <= score_floor:
            continue
        box = tuple(float(v) for v in boxes[index])
        detections.append(Detection(label=name, box=box, score=float(scores[index]), mask=binary_masks[index]))
    return detections


class Mask2FormerDetector:
    """GenEval detections from transformers' Mask2Former (COCO instance segmentation).

    The default checkpoint, facebook/mask2former-swin-small-coco-instance, is
    Meta's original Mask2Former Swin-S release. The official evaluator uses the
    mmdetection 2.x Swin-S checkpoint, so scores, and therefore GenEval numbers,
    are close but not identical; use ``MMDetDetector`` for published-comparable
    numbers. Images are resized to the official test scale (shorter side 800,
    longer at most 1333; the processor rounds both up to multiples of 32), and
    post-processing follows mmdetection (see ``instance_detections``), not
    transformers' ``post_process_instance_segmentation``.

    ``model`` is a hub id (loaded at ``revision``) or a local
    ``save_pretrained`` folder with the model and its image processor.
    ``size`` overrides the processor's resize setting; None keeps the
    processor's own. Raises ``MissingWeightsError`` before building anything when
    the weights are not found.
    """

    name = "mask2former"
    comparable_with_official = False
    weights = (DEFAULT_MASK2FORMER_WEIGHTS,)

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MASK2FORMER_MODEL,
        *,
        revision: str | None = DEFAULT_MASK2FORMER_REVISION,
        device: str | None = None,
        size: Mapping[str, int] | None = OFFICIAL_TEST_SIZE,
        batch_size: int = 4,
        score_floor: float = SCORE_THRESHOLD,
        option: str = "--detector-weights",
    ):
        import torch
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        source = str(model)
        is_local = Path(source).is_dir()
        if not is_local and (Path(source).exists() or os.path.isabs(source) or source.startswith(".")):
            raise MissingWeightsError(
                f"no Mask2Former folder at {source}; expected a save_pretrained folder with config.json, the weights "
                f"and preprocessor_config.json, or a hub id such as {DEFAULT_MASK2FORMER_MODEL}. "
                f"Pass the folder with {option} PATH."
            )
        kwargs: dict[str, Any] = {}
        if not is_local:
            kwargs["revision"] = revision
            check_hub_model_cached(source, revision, option)
        try:
            self.processor = Mask2FormerImageProcessor.from_pretrained(source, **kwargs)
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(source, **kwargs)
        except OSError as error:
            if is_local:
                raise MissingWeightsError(f"could not load Mask2Former from {source}: {error}. Pass a complete folder with {option} PATH.") from error
            raise MissingWeightsError(
                f"could not load {source} (revision {revision}): {error}. Download it on a machine with access "
                f"(hf download {source} --revision {revision}) or pass a local folder with {option} PATH."
            ) from error

        snapshot = Path(source) if is_local else hub_snapshot_folder(source, revision)
        # Local weight folders whose files result JSON hashes: the folder given, or the hub snapshot.
        self.weight_paths: tuple[Path, ...] = (snapshot,) if snapshot is not None else ()
        self.labels = label_map(self.model.config.id2label)
        if not self.labels:
            raise ValueError(
                f"none of the labels of {source} is a GenEval class (first labels: "
                f"{list(self.model.config.id2label.values())[:5]}); expected a COCO instance segmentation checkpoint"
            )
        unmapped = sorted(str(v) for k, v in self.model.config.id2label.items() if int(k) not in self.labels)
        if unmapped:
            logger.warning("mask2former: labels with no GenEval class are ignored: %s", ", ".join(unmapped))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.size = dict(size) if size is not None else None
        self.batch_size = batch_size
        self.score_floor = score_floor
        self.source = source if is_local else f"{source}@{revision}"

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detect objects in RGB uint8 images, ``batch_size`` images per forward pass."""
        import torch

        _check_images(images)
        results: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            batch = [np.ascontiguousarray(image) for image in images[start : start + self.batch_size]]
            options = {"size": self.size} if self.size is not None else {}
            inputs = self.processor(images=batch, return_tensors="pt", **options)
            pixel_values = inputs["pixel_values"].to(self.device)
            pixel_mask = inputs["pixel_mask"].to(self.device)
            with torch.inference_mode(), _tf32_disabled():
                outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
            for index, image in enumerate(batch):
                valid = pixel_mask[index].bool()
                valid_size = (int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum()))
                results.append(instance_detections(
                    outputs.class_queries_logits[index],
                    outputs.masks_queries_logits[index],
                    tuple(pixel_values.shape[-2:]),
                    valid_size,
                    image.shape[:2],
                    self.labels,
                    score_floor=self.score_floor,
                ))
        return results


def check_hub_model_cached(repo_id: str, revision: str | None, option: str) -> None:
    """Raise ``MissingWeightsError`` when ``HF_HUB_OFFLINE`` is set and the model is not cached."""
    if not _hub_offline():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        return
    looked_at = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    raise MissingWeightsError(
        f"Mask2Former weights {repo_id} (revision {revision}) are not in the local Hugging Face cache "
        f"(looked at {looked_at}) and HF_HUB_OFFLINE is set. Download them on a machine with access "
        f"(hf download {repo_id} --revision {revision}) or pass a local folder with {option} PATH."
    )


# --------------------------------------------------------------------------- mmdetection


def import_mmdet() -> Any:
    """Import mmdetection, or raise ``ImportError`` naming the optional extra."""
    try:
        import mmdet
        import mmdet.apis  # noqa: F401 - the inference API, which also needs mmcv
    except ImportError as error:
        raise ImportError(
            f"the mmdet detector needs mmdetection 2.x and mmcv-full 1.x, which could not be imported ({error}). "
            f"Install the optional extra: pip install -e '.[{MMDET_EXTRA}]' after building mmcv-full as described "
            f"in docs/geneval.md, or use --detector mask2former, whose numbers are close to but not identical "
            f"with the official ones."
        ) from error
    return mmdet


def detections_from_mmdet(result: Any, class_names: Sequence[str]) -> list[Detection]:
    """Convert one mmdetection result to detections; class index i gets ``class_names[i]``.

    mmdetection 2.x returns ``(bbox_results, segm_results)``, one (n, 5) array
    of x1, y1, x2, y2, score per class and one list of (H, W) masks per class.
    mmdetection 3.x returns a ``DetDataSample`` whose ``pred_instances`` contains
    ``bboxes``, ``scores``, ``labels`` and ``masks``.
    """
    detections: list[Detection] = []
    instances = getattr(result, "pred_instances", None)
    if instances is not None:
        boxes = _to_numpy(instances.bboxes)
        scores = _to_numpy(instances.scores)
        labels = _to_numpy(instances.labels).astype(int)
        masks = _to_numpy(instances.masks) if hasattr(instances, "masks") else None
        for index, class_id in enumerate(labels):
            mask = masks[index].astype(bool) if masks is not None else None
            detections.append(Detection(class_names[class_id], tuple(float(v) for v in boxes[index][:4]),
                                        float(scores[index]), mask))
        return detections
    if isinstance(result, tuple):
        bbox_results = result[0]
        segm_results = result[1] if len(result) > 1 else None
    else:
        bbox_results, segm_results = result, None
    if isinstance(segm_results, tuple):  # mask scoring heads return (masks, mask scores)
        segm_results = segm_results[0]
    if len(bbox_results) != len(class_names):
        raise ValueError(f"the mmdet result has {len(bbox_results)} classes but {len(class_names)} class names were given")
    for class_id, boxes in enumerate(bbox_results):
        for index, row in enumerate(np.asarray(boxes).reshape(-1, 5)):
            mask = np.asarray(segm_results[class_id][index], dtype=bool) if segm_results is not None else None
            detections.append(Detection(class_names[class_id], tuple(float(v) for v in row[:4]), float(row[4]), mask))
    return detections


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "to_ndarray"):  # mmdet 3.x BitmapMasks
        value = value.to_ndarray()
    return np.asarray(value)


class MMDetDetector:
    """The official GenEval detector: mmdetection's Mask2Former Swin-S, through ``mmdet.apis``.

    Needs the optional extra ``geneval-mmdet`` (mmdetection 2.x with mmcv-full
    1.x; see docs/geneval.md). ``checkpoint`` is the .pth file of the official
    evaluator (``MMDET_CHECKPOINT_URL``) and ``config`` defaults to
    ``MMDET_CONFIG`` under the mmdetection source tree, found next to the
    installed ``mmdet`` package as the official evaluator does. Images are
    converted to BGR, because mmdetection reads arrays as BGR while the official
    evaluator passes file paths. Class index i is GenEval name i, as in the
    official evaluator. NOTE: this path has not been run here, because mmdet
    was not installed.
    """

    name = "mmdet"
    weights = (MMDET_WEIGHTS,)

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        device: str | None = None,
        option: str = "--detector-weights",
    ):
        mmdet = import_mmdet()
        from mmdet.apis import inference_detector, init_detector

        if checkpoint is None or not Path(checkpoint).is_file():
            looked_at = "no path given" if checkpoint is None else f"looked at {checkpoint}"
            raise MissingWeightsError(
                f"the mmdet Mask2Former checkpoint is missing ({looked_at}). Download {MMDET_CHECKPOINT_URL} "
                f"and pass the .pth file with {option} PATH."
            )
        if config is None:
            config = Path(mmdet.__file__).resolve().parent.parent / MMDET_CONFIG
        if not Path(config).is_file():
            raise FileNotFoundError(
                f"mmdet config not found at {config}; install mmdetection 2.x from a source checkout "
                f"(git checkout 2.x, pip install -e .) so its configs/ folder exists, or pass config=PATH"
            )
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._inference = inference_detector
        self.model = init_detector(str(config), str(checkpoint), device=self.device)
        self.class_names = _mmdet_class_names(self.model)
        self.mmdet_version = getattr(mmdet, "__version__", "unknown")
        # Only the 2.x code with the official checkpoint is the official evaluator.
        self.comparable_with_official = self.mmdet_version.startswith("2.")
        self.source = str(checkpoint)
        self.weight_paths = (Path(checkpoint),)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Run the detector on each image, converted to BGR."""
        _check_images(images)
        results = []
        for image in images:
            bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
            with _tf32_disabled():
                result = self._inference(self.model, bgr)
            results.append(detections_from_mmdet(result, self.class_names))
        return results


def _mmdet_class_names(model: Any) -> list[str]:
    """Return GenEval names for the model's classes: by index for 80 classes, else by label name."""
    classes = getattr(model, "CLASSES", None) or getattr(model, "dataset_meta", {}).get("classes")
    if classes is None or len(classes) == len(GENEVAL_OBJECT_NAMES):
        return list(GENEVAL_OBJECT_NAMES)
    names = [to_geneval_name(str(label)) or str(label) for label in classes]
    logger.warning("mmdet: the model has %d classes, not GenEval's 80; classes are mapped by name", len(classes))
    return names


# --------------------------------------------------------------------------- factory


def declared_detector_weights(name: str) -> tuple[WeightsSpec, ...]:
    """Return the pinned weights of the detector called ``name``, without building it."""
    detectors = {"mask2former": Mask2FormerDetector, "mmdet": MMDetDetector, "shapes": ShapesDetector}
    if name not in detectors:
        raise ValueError(f"unknown detector {name!r}; allowed: {', '.join(DETECTOR_NAMES)}")
    return tuple(detectors[name].weights)


def build_detector(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | None = None,
    option: str = "--detector-weights",
) -> GenEvalDetector:
    """Build a detector by name (``mask2former``, ``mmdet`` or ``shapes``).

    ``weights`` is the local Mask2Former folder or the mmdet checkpoint file;
    None takes the pinned hub checkpoint for ``mask2former``.
    """
    if name == "mask2former":
        model = weights if weights is not None else DEFAULT_MASK2FORMER_MODEL
        return Mask2FormerDetector(model, device=device, option=option)
    if name == "mmdet":
        return MMDetDetector(weights, device=device, option=option)
    if name == "shapes":
        if weights is not None:
            raise ValueError("the shapes detector has no weights; drop the weights path")
        return ShapesDetector()
    raise ValueError(f"unknown detector {name!r}; allowed: {', '.join(DETECTOR_NAMES)}")
