"""Client errors, shaped so the stack answers them cleanly.

The stack registers exception handlers for a few classes (request validation, not-found, conflict);
anything else goes to its catch-all handler, which answers and then re-raises, so the server drops
the connection. Bad input is therefore a request-validation error whose ``loc`` names the field
(the stack answers 400 with ``{"errors": [{"loc", "msg", "type"}]}``), and a missing resource is a
not-found error (404).
"""

from fastapi.exceptions import RequestValidationError
from llama_stack_api import ResourceNotFoundError


class InvalidFieldError(RequestValidationError):
    """Bad input: 400, naming the offending field (dotted path, e.g. ``training_config.data_config``)."""

    status_code = 400

    def __init__(self, field: str, message: str):
        super().__init__([{"loc": ["body", *field.split(".")], "msg": f"{field}: {message}", "type": "value_error"}])
        self.field = field
        self.message = f"{field}: {message}"

    def __str__(self) -> str:
        return self.message


class _NotFound(ResourceNotFoundError):
    def __init__(self, message: str):
        Exception.__init__(self, message)


class UnknownModelError(_NotFound):
    def __init__(self, model: str, field: str = "model"):
        super().__init__(f"{field}: {model!r} is not served here")


class UnknownJobError(_NotFound):
    def __init__(self, job: str):
        super().__init__(f"job_uuid: no training job {job!r}")


class UnknownRunError(_NotFound):
    def __init__(self, run_id: str, benchmark_id: str | None = None):
        of = f" of benchmark {benchmark_id!r}" if benchmark_id is not None else ""
        super().__init__(f"run_id: no AILuminate run {run_id!r}{of}")


class UnknownUploadError(_NotFound):
    def __init__(self, upload_id: str):
        super().__init__(f"upload_id: no upload {upload_id!r} in progress")


class RequestFailedError(RuntimeError):
    """The engine (or the queue) failed a request for a reason other than its input: a 5xx."""

    def __init__(self, message: str, status_code: int = 500):
        super().__init__(message)
        self.status_code = status_code
