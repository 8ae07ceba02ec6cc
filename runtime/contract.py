"""The bundle contract as names and specs: every component, tensor, file and method, spelled once.

Export writes bundles with these names and the runtime reads them with the same ones; neither
side spells a name of its own. A method is one `MethodSpec`: which graphs a bundle of it holds,
what its encoder outputs, whether a few-shot memory bank applies, how its image score is formed,
and which post-stages run after its heads. Adding a method adds one spec here (register_method)
and one export module (export/methods/); nothing else in the runtime changes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Components: graph names in the manifest and the stems of their .onnx files.
IMAGE_ENCODER = "image_encoder"
HEADS = "heads"
FNN = "fnn"
SAM_ENCODER = "sam_encoder"
SAM_DECODER = "sam_decoder"
SAM_COMPONENTS = (SAM_ENCODER, SAM_DECODER)

# Tensors: graph input and output names.
IMAGE = "image"  # the normalised NCHW batch every image encoder takes
IMAGE_EMBEDDING = "image_embedding"  # pooled CLIP embedding [B, E]
TAPS = "taps"  # raw residual stream at the taps, CLS dropped [B, T, N, width]
SURGERY_TAPS = "surgery_taps"  # CLIP-AD v-v surgery tokens in the joint space [B, T, 1+N, E]
ANOMALY_MAP = "anomaly_map"  # [B, H_in, W_in], before smoothing
IMAGE_SCORE = "image_score"  # prompt score [B]
HEADS_OUTPUTS = (ANOMALY_MAP, IMAGE_SCORE)  # heads and FNN graphs give the same pair
SAM_IMAGE_EMBEDDINGS = "image_embeddings"
SAM_DECODER_INPUTS = (SAM_IMAGE_EMBEDDINGS, "point_coords", "point_labels", "mask_input", "has_mask_input")
SAM_DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")

# Files.
MANIFEST_FILE = "manifest.json"
TEXT_EMBEDDINGS_FILE = "text_embeddings.npy"
FNN_WEIGHTS_FILE = "fnn_weights.npz"

# Post-stages a method's spec may name (runtime/stages/).
FNN_FUSION = "fnn_fusion"


def onnx_file(component: str, precision: str | None = None) -> str:
    """`image_encoder.onnx`, or `image_encoder.int8.onnx` for a precision variant."""
    return f"{component}.{precision}.onnx" if precision else f"{component}.onnx"


@dataclass(frozen=True)
class MethodSpec:
    """What a bundle of one method holds and how the runtime runs it.

    name: the manifest's method name; option: the `--method` value; components: the graphs;
    encoder_outputs: the image encoder's outputs, in order (the heads take all of them);
    trained_heads: needs linear heads (checkpoint or --random-heads); few_shot: a memory bank of
    raw taps applies; score_rule: runtime/scoring.py; post_stages: map stages after the heads.
    """

    name: str
    option: str
    components: tuple[str, ...]
    encoder_outputs: tuple[str, ...]
    score_rule: str
    trained_heads: bool = False
    few_shot: bool = False
    post_stages: tuple[str, ...] = ()


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (by manifest name); a name or option taken twice is a bug."""
    if spec.name in METHODS or any(m.option == spec.option for m in METHODS.values()):
        raise ValueError(f"method {spec.name!r} / --method {spec.option} is registered already")
    METHODS[spec.name] = spec
    return spec


def method_by_option(option: str) -> MethodSpec:
    """The spec a `--method` value names."""
    for spec in METHODS.values():
        if spec.option == option:
            return spec
    raise KeyError(option)


APRILGAN = register_method(
    MethodSpec(
        "aprilgan_zero_shot",
        "aprilgan",
        (IMAGE_ENCODER, HEADS),
        (IMAGE_EMBEDDING, TAPS),
        score_rule="prompt",
        trained_heads=True,
        few_shot=True,
    )
)
SDP = register_method(
    MethodSpec("sdp", "sdp", (IMAGE_ENCODER, HEADS), (IMAGE_EMBEDDING, SURGERY_TAPS), score_rule="normalised_sum")
)
SDPPLUS = register_method(
    MethodSpec(
        "sdpplus",
        "sdpplus",
        (IMAGE_ENCODER, HEADS),
        (IMAGE_EMBEDDING, SURGERY_TAPS, TAPS),
        score_rule="normalised_sum",
        trained_heads=True,
    )
)
RANDOM_WORD_FNN = register_method(
    MethodSpec(
        "fnn",
        "fnn",
        (IMAGE_ENCODER, HEADS, FNN),
        (IMAGE_EMBEDDING, SURGERY_TAPS),
        score_rule="prompt",
        post_stages=(FNN_FUSION,),
    )
)
