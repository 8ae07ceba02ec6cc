"""The model input tensor: the official torchvision/Pillow result for 8-bit images, old bundles' recorded rule."""

import json
import shutil

import cv2
import numpy as np
import pytest

from zsad_edge.runtime.bundle import load_manifest
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import BundleError
from zsad_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _official_tensor(array: np.ndarray, size: int) -> np.ndarray:
    """What APRIL-GAN's and CLIP-AD's pipelines feed CLIP: the PIL image as opened, through
    Resize((S, S), BICUBIC), CenterCrop, convert('RGB'), ToTensor and Normalize."""
    from PIL import Image
    from torchvision import transforms

    official = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            lambda image: image.convert("RGB"),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    return official(Image.fromarray(array)).numpy()


@pytest.mark.parametrize("size", [224, 240, 518], ids=["shrink224", "shrink240", "enlarge518"])
@pytest.mark.parametrize("channels", [None, 3, 4], ids=["gray", "rgb", "rgba"])
def test_8bit_input_equals_the_official_torchvision_tensor(size, channels):
    """Grayscale, RGB and RGBA (alpha resized premultiplied, as Pillow does) from a 400x256 scan."""
    rng = np.random.default_rng(size + (channels or 1))
    shape = (256, 400) if channels is None else (256, 400, channels)
    image = (rng.random(shape) * 255).astype(np.uint8)
    got = preprocess_batch([image], PreprocessSpec((size, size), OPENAI_MEAN, OPENAI_STD))[0]
    assert np.abs(got - _official_tensor(image, size)).max() <= 1e-6


def test_the_old_opencv_kernel_would_differ_by_many_grey_levels():
    """Why the rule matters: a sharp scan shrunk to 224 px differs by tens of grey levels."""
    rng = np.random.default_rng(0)
    image = ((rng.random((256, 400)) > 0.5) * 255).astype(np.uint8)
    spec = PreprocessSpec((224, 224), (0, 0, 0), (1, 1, 1))
    legacy = PreprocessSpec((224, 224), (0, 0, 0), (1, 1, 1), interpolation="bicubic")
    difference = np.abs(preprocess_batch([image], spec) - preprocess_batch([image], legacy)).max() * 255
    assert difference > 20


def test_detector_reads_a_png_file_into_the_official_tensor(tiny_built, tmp_path):
    rng = np.random.default_rng(1)
    image = (rng.random((256, 400, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "part.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    detector = Detector.from_bundle(tiny_built.path)
    spec = detector.manifest.preprocess
    assert spec.interpolation == "pil_bicubic"
    batch, sizes = detector.preprocess([tmp_path / "part.png"])
    from PIL import Image
    from torchvision import transforms

    official = transforms.Compose(
        [
            transforms.Resize(spec.input_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    want = official(Image.open(tmp_path / "part.png")).numpy()
    assert sizes == [(256, 400)] and np.abs(batch[0] - want).max() <= 1e-6


def test_16bit_and_float_images_take_the_float_path_of_the_same_kernel():
    """No official counterpart: scaled to [0, 1], each channel resized by Pillow's bicubic in float."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 300), (120, 1)).astype(np.uint16)
    spec = PreprocessSpec((64, 64), (0, 0, 0), (1, 1, 1))
    got = preprocess_batch([ramp], spec)[0]
    want = np.asarray(Image.fromarray(ramp.astype(np.float32) / 65535.0).resize((64, 64), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(got, np.clip(np.stack([want] * 3), 0, 1), atol=1e-6)
    steps = np.unique(np.round(got[0, 10] * 65535))
    assert steps.size == 64  # finer than 8 bits: no rounding to 256 levels
    constant = preprocess_batch([np.full((50, 70, 3), 0.3, np.float64)], spec)[0]
    np.testing.assert_allclose(constant, 0.3, atol=1e-6)


def test_bundles_keep_their_recorded_rule(tiny_built, tmp_path):
    """A bundle built before the official kernel (interpolation "bicubic", or no field) still loads and
    resizes with OpenCV as it was built; an unknown rule is refused by name."""
    old = tmp_path / "old"
    shutil.copytree(tiny_built.path, old)
    manifest_path = old / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["preprocess"]["interpolation"] = "bicubic"
    manifest_path.write_text(json.dumps(data))
    image = (np.random.default_rng(2).random((256, 400)) * 255).astype(np.uint8)
    batch, _ = Detector.from_bundle(old).preprocess([image])
    spec = load_manifest(old).preprocess
    rgb = np.repeat(image[:, :, None].astype(np.float32) / 255, 3, axis=2)
    opencv = np.clip(cv2.resize(rgb, spec.input_size[::-1], interpolation=cv2.INTER_CUBIC), 0, 1)
    np.testing.assert_allclose(batch[0], ((opencv - spec.mean) / spec.std).transpose(2, 0, 1), atol=1e-5)
    del data["preprocess"]["interpolation"]
    manifest_path.write_text(json.dumps(data))
    assert load_manifest(old).preprocess.interpolation == "bicubic"
    data["preprocess"]["interpolation"] = "lanczos9"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="preprocess.interpolation must be one of pil_bicubic, .* got 'lanczos9'"):
        load_manifest(old)
