"""Fixtures for the pipeline tests: moto S3 in-process with fake credentials, a bucket, fault hooks.

Import the fixtures you use into a test module (pytest finds fixtures in a module's globals):

    from s3_fixtures import aws_env, bucket, fresh_luigi, s3, s3_hooks  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import luigi
import pytest
from botocore.awsrequest import AWSResponse
from luigi.task_register import Register
from moto import mock_aws

BUCKET = "photos"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fake credentials and region for boto3's default chain; no real profile or endpoint."""
    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in fake.items():
        monkeypatch.setenv(name, value)
    empty = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # boto3's default session caches credentials and event hooks: each test gets a new one.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    """A boto3 S3 client on moto's in-process S3 (every boto3 client made meanwhile is mocked)."""
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    """An empty bucket named ``photos``."""
    s3.create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture(autouse=True)
def fresh_luigi() -> Iterator[None]:
    """Luigi caches task instances per process; tests that build twice must start clean."""
    Register.clear_instance_cache()
    yield
    Register.clear_instance_cache()


def error_response(status: int, code: str, message: str = "") -> tuple[AWSResponse, dict[str, Any]]:
    """What a ``before-call`` hook returns to make botocore see an S3 error (as Stubber does)."""
    parsed = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return AWSResponse(None, status, {}, None), parsed


class S3Hooks:
    """Register botocore event handlers on the default session: they reach every client made later.

    Luigi's S3Client and our helpers build their boto3 clients lazily from that session, so a
    hook registered before the task runs sees the task's real requests.
    """

    def __init__(self) -> None:
        self.session = boto3._get_default_session()

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        """``event`` like ``before-call.s3.HeadObject`` or ``after-call.s3.GetObject``."""
        self.session.events.register(event, handler)


@pytest.fixture
def s3_hooks(s3: Any) -> S3Hooks:
    """Fault injection into the S3 calls the code under test makes."""
    return S3Hooks()


def run(*tasks: luigi.Task) -> luigi.execution_summary.LuigiRunResult:
    """Build with the local scheduler in this process and return Luigi's detailed result."""
    return luigi.build(list(tasks), local_scheduler=True, detailed_summary=True, workers=1)
