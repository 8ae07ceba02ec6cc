"""Building a bundle for any method: load CLIP, precompute text, export, verify, write.

This is the library behind `python export/build_engines.py`; tests and benchmarks call it
directly and get back the torch modules the graphs were exported from, for parity checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
from torch import nn

from zsad_edge.runtime.bundle import Manifest, load_manifest, sha256_file
from zsad_edge.runtime.contract import FNN, HEADS, HEADS_OUTPUTS, IMAGE, IMAGE_ENCODER, TEXT_EMBEDDINGS_FILE, onnx_file
from zsad_edge.runtime.errors import ModelLoadError
from zsad_edge.runtime.sam.cascade import CascadeConfig, attach_sam
from zsad_edge.runtime.sam.predictor import SamGeometry

from .graphs.bundle_writer import finalize_manifest, refuse_existing, staged_bundle
from .graphs.lean_attention import lean_attention_copy
from .graphs.onnx_export import check_parity, export_module
from .graphs.sam_graphs import export_sam_graphs
from .methods import EXPORT_METHODS, MethodModules, export_method, from_manifest
from .models.aprilgan import AprilGanHeads, load_head_weights, randomize_heads
from .models.clip import ClipSpec, LoadedClip, default_taps, load_clip, validate_taps
from .models.fnn import FnnTrainConfig
from .models.sam import LoadedSam, SamSpec, litemedsam_asset, load_sam
from .references.detector import ReferenceDetector
from .references.sam_predictor import ReferenceSamPredictor

LOG = logging.getLogger(__name__)
# Graphs are traced at batch 2; checking 1 and 4 covers both sides of the traced size.
PARITY_BATCH_SIZES = (1, 4)


@dataclass
class BuildConfig:
    """Everything that decides a bundle's contents."""

    clip: ClipSpec
    out_dir: Path
    method: str = "aprilgan"
    object_name: str = "object"
    taps: list[int] | None = None
    heads_checkpoint: Path | None = None
    random_heads: bool = False
    prompt_set: str | None = None  # None: the method's own
    gaussian_sigma: float | None = None  # None: the method's own
    dbscan: str = "mvtec"  # CLIP-AD's data-set settings: "mvtec" or "visa" (DBSCAN, SDP+ smoothing)
    clipad_mode: str | None = None  # sdp/sdpplus/fnn: "official" or "clean"; None: the method's default
    fusion_weight: float | None = None  # FNN method: weight of the FNN against the prompt score
    fnn: FnnTrainConfig = field(default_factory=FnnTrainConfig)
    sam: SamSpec | None = None  # CLIP-SAM: refine the CLIP map with this SAM
    cascade: CascadeConfig | None = None  # None: the documented defaults (runtime/sam/cascade.py)
    parity_tolerance: float = 1e-4
    image_threshold: float | None = None  # None: the middle of the method's uncalibrated score range
    overwrite: bool = False
    seed: int = 0


@dataclass
class BuiltBundle:
    """The written bundle plus the torch modules its graphs came from."""

    path: Path
    manifest: Manifest
    modules: MethodModules
    sam: LoadedSam | None = None

    @property
    def encoder(self) -> nn.Module:
        return self.modules.encoder

    @property
    def heads(self) -> nn.Module:
        return self.modules.heads

    def reference_detector(self, device: str = "cpu") -> ReferenceDetector:
        return _reference(self.manifest, self.modules, self.sam, device)


def _reference(manifest: Manifest, modules: MethodModules, sam: LoadedSam | None, device: str) -> ReferenceDetector:
    reference = ReferenceDetector(
        manifest, modules.encoder, modules.heads, modules.extra_graphs.get(FNN), device=device
    )
    if sam is not None:
        attach_sam(
            reference, ReferenceSamPredictor(sam, SamGeometry.from_params(manifest.method["params"]["sam"]), device)
        )
    return reference


def build_bundle(config: BuildConfig) -> BuiltBundle:
    """Build, verify and atomically write a bundle of `config.method`."""
    method = export_method(config.method)
    trained = [m for m, plugin in EXPORT_METHODS.items() if plugin.spec.trained_heads]
    if method.spec.trained_heads and config.heads_checkpoint is None and not config.random_heads:
        raise ModelLoadError(
            f"{config.method} needs trained linear heads: pass --heads-checkpoint PATH (official APRIL-GAN "
            "checkpoint or export/train_heads.py output), or --random-heads for tests and timing"
        )
    if not method.spec.trained_heads and config.heads_checkpoint is not None:
        raise ModelLoadError(
            f"{config.method} is training-free and takes no --heads-checkpoint "
            f"(methods with trained heads: {', '.join(trained)})"
        )
    refuse_existing(config.out_dir, config.overwrite)
    _check_local_files(config)
    params = method.params(
        config.object_name,
        config.prompt_set,
        config.gaussian_sigma,
        config.dbscan,
        fusion_weight=config.fusion_weight,
        clipad_mode=config.clipad_mode,
    )
    clip = load_clip(config.clip)
    taps = validate_taps(config.taps, clip.num_layers) if config.taps else default_taps(clip.num_layers)
    text = method.text_features(clip, params)
    modules = method.assemble(clip, taps, text, params)
    if modules.linear_heads is not None:
        params["heads"] = _init_heads(modules.linear_heads, config, _encoder_settings(clip.activation, params, taps))
    method.prepare(modules, clip, params, config)
    sam = load_sam(config.sam) if config.sam is not None else None
    if sam is not None:
        params["sam"] = _sam_params(config, sam)

    with staged_bundle(config.out_dir, config.overwrite) as staging:
        components, parity = _export_graphs(modules, clip, staging, config.parity_tolerance, config.seed)
        if sam is not None:
            sam_components, sam_parity = export_sam_graphs(sam, staging, config.parity_tolerance, config.seed)
            components.update(sam_components)
            parity.update(sam_parity)
        np.save(staging / TEXT_EMBEDDINGS_FILE, text.numpy().astype(np.float32))
        method.write_files(modules, staging, params)
        manifest = Manifest(
            method={"name": method.spec.name, "params": {**params, "text_embeddings": TEXT_EMBEDDINGS_FILE}},
            clip=_clip_record(config.clip, clip),
            preprocess=clip.preprocess_spec(),
            taps=taps,
            patch_grid=list(clip.patch_grid),
            components=components,
            scoring=method.default_scoring(len(taps), config.image_threshold),
            parity=parity,
            producer=f"zsad-edge {_version()}",
        )
        finalize_manifest(staging, manifest)
    LOG.info("bundle written to %s", config.out_dir)
    return BuiltBundle(Path(config.out_dir), manifest, modules, sam)


def _check_local_files(config: BuildConfig) -> None:
    """Every file the build names exists, checked before any model is loaded or downloaded."""
    files = {
        "CLIP checkpoint": config.clip.checkpoint,
        "heads checkpoint": config.heads_checkpoint,
        "SAM checkpoint": config.sam.checkpoint if config.sam is not None else None,
    }
    for what, path in files.items():
        if path is not None and not Path(path).is_file():
            raise ModelLoadError(f"{what} not found: {path}")


def _sam_params(config: BuildConfig, sam: LoadedSam) -> dict:
    """The manifest's SAM record: kind, weights, geometry, and every cascade constant."""
    cascade = config.cascade or CascadeConfig()
    return {
        "kind": config.sam.kind,
        "weights": sam.weights_origin,
        "input_size": sam.input_size,
        "pixel_mean": list(sam.pixel_mean),
        "pixel_std": list(sam.pixel_std),
        "embedding_grid": list(sam.embedding_grid),
        "mask_threshold": 0.0,
        "cascade": cascade.to_dict(),
    }


def _encoder_settings(activation: dict, params: dict, taps: list[int]) -> dict:
    """What trained heads depend on besides the architecture: the activation, the CLIP-AD mode, the taps."""
    return {"activation": activation["name"], "clipad_mode": params.get("clipad_mode"), "taps": taps}


def _init_heads(heads: AprilGanHeads, config: BuildConfig, settings: dict[str, str]) -> dict:
    if config.heads_checkpoint is not None:
        digest = load_head_weights(heads, config.heads_checkpoint, settings)
        return {"kind": "checkpoint", "file": Path(config.heads_checkpoint).name, "sha256": digest}
    return randomize_heads(heads, config.seed + 1)


def reference_from_bundle(
    bundle_dir: str | Path,
    clip_checkpoint: Path | None = None,
    heads_checkpoint: Path | None = None,
    device: str = "cpu",
    sam_checkpoint: Path | None = None,
) -> ReferenceDetector:
    """Rebuild the PyTorch reference a bundle was exported from, using its manifest.

    Pretrained tags are loaded again; random weights are regenerated from their recorded seeds;
    local checkpoints must be passed again and must match the recorded sha256. The text vectors
    come from the bundle's .npy, exactly as the graphs have them baked in.
    """
    manifest = load_manifest(bundle_dir)
    method = from_manifest(manifest.method["name"])
    weights = manifest.clip["weights"]
    common = {"image_size": manifest.preprocess.input_size[0], "activation": _recorded_activation(manifest.clip)}
    architecture = manifest.clip["architecture"]
    if weights["kind"] == "pretrained":
        spec = ClipSpec(architecture, pretrained=weights["tag"], **common)
    elif weights["kind"] == "random":
        spec = ClipSpec(architecture, random_init=True, seed=weights["seed"], **common)
    else:
        spec = ClipSpec(
            architecture, checkpoint=_matching_file(clip_checkpoint, weights, "--clip-checkpoint"), **common
        )
    clip = load_clip(spec)
    params = manifest.method["params"]
    text = torch.from_numpy(np.load(Path(bundle_dir) / params["text_embeddings"]))
    modules = method.assemble(clip, manifest.taps, text, params)
    if modules.linear_heads is not None:
        if params["heads"]["kind"] == "random":
            randomize_heads(modules.linear_heads, params["heads"]["seed"])
        else:
            load_head_weights(
                modules.linear_heads,
                _matching_file(heads_checkpoint, params["heads"], "--heads-checkpoint"),
                _encoder_settings(clip.activation, params, manifest.taps),
            )
    method.restore(modules, bundle_dir, params)
    sam = None
    if "sam" in params:
        record = params["sam"]
        weights = record["weights"]
        if weights["kind"] == "random":
            sam = load_sam(SamSpec(record["kind"], random_init=True, seed=weights["seed"]))
        else:
            checkpoint = sam_checkpoint
            if checkpoint is None and record["kind"] == "litemedsam":
                checkpoint = litemedsam_asset()
            sam = load_sam(SamSpec(record["kind"], checkpoint=_matching_file(checkpoint, weights, "--sam-checkpoint")))
    return _reference(manifest, modules, sam, device)


def _recorded_activation(clip_record: dict) -> str:
    """The activation a bundle's graphs were built with.

    Bundles from before it was recorded forced QuickGELU when their pretrained tag said so and
    otherwise kept the architecture config's activation (what "auto" gives without a tag).
    """
    if "activation" in clip_record:
        return clip_record["activation"]["name"]
    weights = clip_record["weights"]
    tagged = weights["kind"] == "pretrained" and open_clip.get_pretrained_cfg(
        clip_record["architecture"], weights["tag"]
    )
    return "quick_gelu" if tagged and tagged.get("quick_gelu") else "auto"


def _matching_file(path: Path | None, record: dict, flag: str) -> Path:
    """The user-supplied file for a recorded checkpoint, refused unless its sha256 matches."""
    if path is None:
        raise ModelLoadError(f"the bundle was built from checkpoint {record['file']}: pass it again with {flag} PATH")
    if not Path(path).is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if sha256_file(Path(path)) != record["sha256"]:
        raise ModelLoadError(
            f"{path} is not the checkpoint the bundle was built from ({record['file']}, sha256 differs)"
        )
    return Path(path)


def _export_graphs(modules: MethodModules, clip: LoadedClip, staging: Path, tolerance: float, seed: int):
    """Export encoder and heads separately (stage timings, reuse of taps by later methods)."""
    height, width = clip.input_size
    generator = torch.Generator().manual_seed(seed + 2)

    def images(batch: int) -> tuple[torch.Tensor]:
        return (torch.randn(batch, 3, height, width, generator=generator),)

    def features(batch: int) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return modules.encoder(*images(batch))

    encoder_spec = export_module(
        lean_attention_copy(modules.encoder),
        images(2),
        staging / onnx_file(IMAGE_ENCODER),
        [IMAGE],
        modules.encoder_outputs,
    )
    components = {IMAGE_ENCODER: encoder_spec}
    parity = {
        IMAGE_ENCODER: check_parity(
            modules.encoder, staging / encoder_spec.file, images, PARITY_BATCH_SIZES, tolerance
        ).to_dict()
    }
    # The heads and every further graph of the method read all encoder outputs and give the heads' pair.
    for name, module in {HEADS: modules.heads, **modules.extra_graphs}.items():
        components[name] = export_module(
            module, features(2), staging / onnx_file(name), modules.encoder_outputs, list(HEADS_OUTPUTS)
        )
        parity[name] = check_parity(
            module, staging / components[name].file, features, PARITY_BATCH_SIZES, tolerance
        ).to_dict()
    return components, parity


def _clip_record(spec: ClipSpec, clip: LoadedClip) -> dict:
    return {
        "architecture": spec.architecture,
        "weights": clip.weights_origin,
        "width": clip.width,
        "embed_dim": clip.embed_dim,
        "layers": clip.num_layers,
        "activation": clip.activation,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zsad-edge")
    except PackageNotFoundError:
        return "unknown"
