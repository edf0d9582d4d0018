"""The one error type for bad user input (images, styles, params).

It is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` so that ``mlflow models serve``
answers it as HTTP 400 with our message (any other exception becomes a generic 400 whose body
hides the reason in a stack trace), and the CLI can map it to exit code 2.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class StyleInputError(MlflowException):
    """Bad input: the message names the input and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def is_input_error(exc: BaseException) -> bool:
    """True for bad-input errors, also when raised by a copy of this module shipped with a model.

    A model's ``code_paths`` copy of ``neuralstyle`` may be a different module object than the
    one the caller imported, so class identity is not enough; the error code is.
    """
    return isinstance(exc, MlflowException) and exc.error_code == "INVALID_PARAMETER_VALUE"
