"""Stylize every photo under an S3 prefix or in a folder, one Luigi task per photo.

    luigi --module tasks StylizeBatch --images s3://photos/in/ --results s3://photos/out/ --workers 2
    luigi --module tasks StylizeBatch --images photos/ --results out/photos-7 --style 7

One bad photo fails only its own task (the others still run, and their results stay); a rerun
does only the photos whose result is missing. ``python -m tasks.run --image <prefix or folder>``
runs this and prints a one-line summary of what failed and why after Luigi's own summary.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import luigi
from botocore.exceptions import ClientError

from neuralstyle.model.imaging import SUFFIX_FORMATS
from neuralstyle.run.inference import default_output
from tasks.base import RequestParams, mirror_path
from tasks.stylize import STAGING_ROOT, PublishStylized, Stylize
from tasks.targets import boto3_s3, parse_s3_uri, s3_error

logger = logging.getLogger("luigi-interface.tasks")

RESULT_SUFFIXES = (".jpg", ".png", ".webp")


def is_image_name(name: str) -> bool:
    """True for the file names the batch picks up (.jpg, .jpeg, .png, .webp, any case)."""
    return name.lower().endswith(tuple(SUFFIX_FORMATS))


def is_batch_location(location: str) -> bool:
    """True when ``location`` names many photos: an S3 prefix ending in ``/`` or a local folder."""
    if location.startswith("s3://"):
        return location.endswith("/") or "/" not in location[len("s3://"):]
    return Path(location).is_dir()


def _prefix(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``(bucket, "some/prefix/")``: a prefix always ends in /."""
    bucket, key = parse_s3_uri(location, allow_empty_key=True)
    return bucket, (key.rstrip("/") + "/" if key.strip("/") else "")


def list_images(location: str, *, client: Any | None = None,
                accept: Callable[[str], bool] = is_image_name) -> tuple[list[str], int]:
    """Photos under an S3 prefix or a folder (recursively), sorted; and how many were skipped.

    Skipped: files whose suffix is not an image suffix (a README, a .DS_Store, a "folder" key).
    ``accept`` picks other files instead (the video batch passes its clip suffixes).
    """
    found: list[str] = []
    skipped = 0
    if location.startswith("s3://"):
        bucket, prefix = _prefix(location)
        s3 = boto3_s3(client)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    if accept(item["Key"]):
                        found.append(f"s3://{bucket}/{item['Key']}")
                    else:
                        skipped += 1
        except ClientError as err:
            raise s3_error(err, location, "listing the photos under it") from err
    else:
        folder = Path(location)
        if not folder.is_dir():
            raise FileNotFoundError(f"{location} is not a folder: nothing to stylize")
        for path in folder.rglob("*"):
            if path.is_file() and "-luigi-tmp-" not in path.name:
                if accept(path.name):
                    found.append(str(path))
                else:
                    skipped += 1
    return sorted(found), skipped


def result_location(image: str, images: str, results: str, style: str, suffix: str) -> str:
    """Where the result of ``image`` goes: the same relative path under ``results``, renamed
    ``<stem>-<style><suffix>`` the way a single photo's default output is named."""
    if image.startswith("s3://"):
        bucket, prefix = _prefix(images)
        relative = PurePosixPath(image[len(f"s3://{bucket}/") + len(prefix):])
    else:
        relative = PurePosixPath(Path(os.path.relpath(image, images)).as_posix())
    name = Path(default_output(relative.name, style)).with_suffix(suffix).name
    rel_out = relative.parent / name
    if results.startswith("s3://"):
        bucket, prefix = _prefix(results)
        return f"s3://{bucket}/{prefix}{rel_out}"
    return str(Path(results) / rel_out)


class StylizeBatch(RequestParams, luigi.WrapperTask):
    """Every photo under ``images`` -> a result under ``results`` (a folder or an S3 prefix)."""

    images = luigi.Parameter(description="s3://bucket/prefix/ or a local folder of photos")
    results = luigi.Parameter(
        description="s3://bucket/prefix/ (results are uploaded) or a local folder"
    )
    suffix = luigi.ChoiceParameter(
        default=".jpg", choices=RESULT_SUFFIXES, var_type=str,
        description="format of the results: .jpg, .png or .webp (default: .jpg)",
    )
    staging_root = luigi.Parameter(
        default=STAGING_ROOT,
        description=f"where results bound for S3 are written first, as <root>/<bucket>/<key> "
        f"(default: {STAGING_ROOT})",
    )
    force = luigi.BoolParameter(
        default=False, significant=False,
        description="stylize (and upload) every photo again (default: false)",
    )
    # The per-photo settings are Stylize's own parameters (same names, defaults and help).
    style = Stylize.style
    style_image = Stylize.style_image
    executor = Stylize.executor
    model_uri = Stylize.model_uri
    server_url = Stylize.server_url
    tracking_uri = Stylize.tracking_uri

    _listing: list[str] | None = None

    def photos(self) -> list[str]:
        """The photos to stylize, listed once per task instance (Luigi calls requires() often)."""
        if self._listing is None:
            listing, skipped = list_images(self.images)
            if not listing:
                raise FileNotFoundError(
                    f"no photos ({', '.join(SUFFIX_FORMATS)}) under {self.images} "
                    f"({skipped} other files)"
                )
            logger.info(
                "StylizeBatch: %d photos under %s%s", len(listing), self.images,
                f" ({skipped} files that are not photos skipped)" if skipped else "",
            )
            self._listing = listing
        return self._listing

    def photo_settings(self) -> dict[str, Any]:
        """The Stylize parameters every photo of the batch shares."""
        return {
            **{name: getattr(self, name)
               for name in ("style", "style_image", "executor", "model_uri", "server_url",
                            "tracking_uri", "force")},
            **self.request_params(),
        }

    def requires(self) -> list[luigi.Task]:
        tasks: list[luigi.Task] = []
        for image in self.photos():
            label = Path(str(self.style_image)).stem if self.style_image else self.style
            where = result_location(image, self.images, self.results, label, self.suffix)
            if where.startswith("s3://"):
                staging = str(mirror_path(where, self.staging_root))
                tasks.append(PublishStylized(
                    image=image, s3_path=where, output_path=staging, **self.photo_settings()
                ))
            else:
                tasks.append(Stylize(image=image, output_path=where, **self.photo_settings()))
        return tasks
