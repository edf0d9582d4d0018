"""Luigi pipeline tasks for Stylize: S3 in and out, forced reruns, Canvas submissions.

    luigi --module tasks Stylize --image s3://bucket/photos/cat.jpg --style 7
    luigi --module tasks StylizeBatch --images s3://bucket/photos/ --results out/photos --workers 2
    luigi --module tasks S3Download --s3-path s3://bucket/photos/cat.jpg
    luigi --module tasks StylizeVideo --image s3://bucket/clips/dog.mp4 --style 7   # a video
    luigi --module tasks StylizeSpark --images s3://photos/in/ --results s3://photos/out/  # Spark
    python -m tasks.run --image s3://bucket/photos/cat.jpg   # the same, logged as an MLflow run

Importing this package registers the tasks with Luigi (so ``--module tasks`` finds them); it
opens no files and makes no clients or network calls.
"""

from tasks.base import (
    ForceableTask,
    LocalFileExists,
    S3Download,
    S3FileExists,
    S3Upload,
    download_s3_object,
    local_input_path,
    mirror_path,
    remove_outputs,
    upload_file_atomic,
)
from tasks.batch import StylizeBatch, list_images
from tasks.canvas import SubmitToCanvas, submit_file_to_canvas
from tasks.spark import StylizeSpark
from tasks.stylize import PublishStylized, Stylize, StylizeToCanvas
from tasks.targets import (
    S3ObjectTarget,
    SuffixAtomicLocalTarget,
    parse_s3_uri,
    s3_client,
    stat_s3_object,
)
from tasks.video import PublishStylizedVideo, StylizeVideo, StylizeVideoBatch, StylizeVideoSegment

__all__ = [
    "ForceableTask",
    "LocalFileExists",
    "PublishStylized",
    "PublishStylizedVideo",
    "S3Download",
    "S3FileExists",
    "S3ObjectTarget",
    "S3Upload",
    "Stylize",
    "StylizeBatch",
    "StylizeSpark",
    "StylizeToCanvas",
    "StylizeVideo",
    "StylizeVideoBatch",
    "StylizeVideoSegment",
    "SubmitToCanvas",
    "SuffixAtomicLocalTarget",
    "download_s3_object",
    "list_images",
    "local_input_path",
    "mirror_path",
    "parse_s3_uri",
    "remove_outputs",
    "s3_client",
    "stat_s3_object",
    "submit_file_to_canvas",
    "upload_file_atomic",
]
