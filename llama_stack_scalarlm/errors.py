"""Client errors with the HTTP status the stack answers them with (it reads ``status_code``)."""


class InvalidFieldError(ValueError):
    """Bad input: a 400 whose message starts with the offending field."""

    status_code = 400

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownModelError(LookupError):
    status_code = 404

    def __init__(self, model: str):
        super().__init__(f"model: {model!r} is not served here")
        self.model = model


class UnknownJobError(LookupError):
    status_code = 404

    def __init__(self, job: str):
        super().__init__(f"job_uuid: no training job {job!r}")


class UnknownUploadError(LookupError):
    status_code = 404

    def __init__(self, upload_id: str):
        super().__init__(f"upload_id: no upload {upload_id!r} in progress")


class RequestFailedError(RuntimeError):
    """The engine failed on a request for a reason other than its input."""

    status_code = 500
