"""The base of every model a client's input is read into (request bodies, shield params, training
rows, a job's settings): a field it does not declare (a typo, another provider's option) is a 400
naming it, never silently dropped."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
