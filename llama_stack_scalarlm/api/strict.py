"""The base of every request body a client sends to ScalarLM's routes: a field the route does not
take (a typo, another provider's option) is a 400 naming it, never silently dropped."""

from pydantic import BaseModel, ConfigDict


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
