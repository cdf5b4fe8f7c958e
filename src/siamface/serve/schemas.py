"""Response bodies of the REST service, as pydantic models so /docs shows real schemas."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    detail: str = Field(description="what went wrong, in one sentence")
    code: str = Field(description="machine-readable reason, e.g. bad_image, no_face")


class VerifyOut(BaseModel):
    similarity: float = Field(description="cosine similarity of the two faces, -1..1")
    same: bool = Field(description="similarity >= threshold")
    threshold: float
    threshold_source: str = Field(description="where the threshold came from")
    model: str = Field(description="fingerprint of the model's weights")


class EmbedOut(BaseModel):
    embedding: list[float] = Field(description="L2-normalised embedding")
    dim: int
    model: str = Field(description="fingerprint: only compare embeddings of the same model")


class MatchOut(BaseModel):
    name: str
    score: float = Field(description="cosine similarity to this person")
    accepted: bool = Field(description="score >= threshold")
    metadata: dict = Field(default_factory=dict)


class IdentifyOut(BaseModel):
    identity: str = Field(description="best match, or 'unknown' below the threshold")
    known: bool
    score: float | None
    threshold: float | None
    matches: list[MatchOut]
    model: str


class PersonOut(BaseModel):
    id: int
    name: str
    n_images: int
    metadata: dict = Field(default_factory=dict)
    created: float = Field(description="enrollment time, seconds since the epoch")


class EnrollOut(BaseModel):
    person: PersonOut
    warnings: list[str] = Field(default_factory=list)


class PeopleOut(BaseModel):
    count: int
    people: list[PersonOut]


class RemovedOut(BaseModel):
    removed: str


class HealthOut(BaseModel):
    status: str
    version: str
    model: dict
    gallery: dict | None
    writes_enabled: bool
    limits: dict
    batching: dict
