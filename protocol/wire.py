"""The base of every body that crosses a process."""

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Unknown fields from a newer peer are ignored, not fatal."""

    model_config = ConfigDict(extra="ignore")
