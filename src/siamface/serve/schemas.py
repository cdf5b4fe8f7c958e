"""Response bodies of the REST service, as pydantic models so /docs shows real schemas."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FieldError(BaseModel):
    loc: list[str]
    msg: str


class FoundFaceOut(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in the photo's pixels")
    landmarks: list[list[float]] = Field(description="eyes, nose tip, mouth corners")
    score: float = Field(description="the detector's confidence, 0..1")
    merge: bool = Field(False, description="a box that holds two faces (never used)")


class DetectionOut(BaseModel):
    """Every face found in one uploaded photo and which one was used."""

    field: str = Field(description="the upload this is about (image1, image2, image ...)")
    faces: list[FoundFaceOut] = Field(description="every face found, largest first")
    face_used: int | None = Field(description="index in faces of the face the model saw")
    policy: str | None = Field(None, description="how it was chosen: auto, ..., or picked")
    ambiguous: bool = Field(False, description="two faces were equally likely (auto rule)")
    note: str = Field(description="e.g. '3 faces found, used face 0 at (x0, y0, x1, y1)'")


class ErrorOut(BaseModel):
    """The one shape of every error answer (4xx and 5xx)."""

    detail: str = Field(description="what went wrong, in one sentence")
    code: str = Field(
        description="machine-readable reason: bad_image, no_face, too_large, image_too_large, "
        "invalid_request, missing_api_key, wrong_api_key, writes_disabled, no_gallery, "
        "not_enrolled, already_enrolled, busy, not_found, internal_error ..."
    )
    field: str | None = Field(None, description="the form field or parameter at fault")
    errors: list[FieldError] | None = Field(None, description="each invalid field (422)")
    faces: list[FoundFaceOut] | None = Field(
        None, description="ambiguous_face: every face found, to choose one (face1/face2/face)"
    )


class VerifyOut(BaseModel):
    similarity: float = Field(description="cosine similarity of the two faces, -1..1")
    same: bool = Field(description="similarity >= threshold")
    threshold: float
    threshold_source: str = Field(description="where the threshold came from")
    model: str = Field(description="fingerprint of the model's weights")
    probability: float | None = Field(
        None, description="same-person probability from the model's pair head (BCE), if any"
    )
    faces: list[str] | None = Field(
        None, description="with ?faces=true: the aligned faces the model saw, JPEG data URLs"
    )
    person: str | None = Field(
        None, description="the claimed identity the face was verified against, if one was sent"
    )
    detections: list[DetectionOut] = Field(
        default_factory=list, description="per photo: every face found and the one used"
    )


class EmbedOut(BaseModel):
    embedding: list[float] = Field(description="L2-normalised embedding")
    dim: int
    model: str = Field(description="fingerprint: only compare embeddings of the same model")
    detections: list[DetectionOut] = Field(
        default_factory=list, description="every face found in the photo and the one used"
    )


class MatchOut(BaseModel):
    name: str
    score: float = Field(description="cosine similarity to this person")
    accepted: bool = Field(description="score >= threshold")
    metadata: dict = Field(default_factory=dict)
    thumbnail: str = Field(description="URL of the person's thumbnail (404 when none)")


class FaceIdentityOut(BaseModel):
    """The answer for one face of the photo (``?every_face=true``)."""

    index: int = Field(description="the face's number in detections[0].faces")
    box: list[float] | None = Field(description="x0, y0, x1, y1 in the photo's pixels")
    identity: str
    known: bool
    score: float | None
    threshold: float | None
    matches: list[MatchOut]


class IdentifyOut(BaseModel):
    identity: str = Field(description="best match, or 'unknown' below the threshold")
    known: bool
    score: float | None
    threshold: float | None
    matches: list[MatchOut]
    model: str
    face: str | None = Field(None, description="with ?faces=true: the aligned probe face")
    detections: list[DetectionOut] = Field(
        default_factory=list, description="every face found in the photo and the one used"
    )
    faces: list[FaceIdentityOut] | None = Field(
        None, description="with ?every_face=true: an answer for every face in the photo"
    )


class BatchError(BaseModel):
    code: str = Field(description="why this photo could not be used (bad_image, no_face ...)")
    detail: str
    field: str | None = None


class BatchEmbedItem(BaseModel):
    index: int = Field(description="position of the photo in the request")
    embedding: list[float] | None = None
    error: BatchError | None = None


class BatchEmbedOut(BaseModel):
    model: str
    dim: int
    results: list[BatchEmbedItem]


class BatchVerifyItem(BaseModel):
    index: int = Field(description="position of the pair in the request")
    similarity: float | None = None
    same: bool | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    probability: float | None = None
    error: BatchError | None = None


class BatchVerifyOut(BaseModel):
    model: str
    results: list[BatchVerifyItem]


class FaceIdentifyOut(BaseModel):
    box: list[float] | None = Field(
        None, description="the face's box in the photo (x, y, w, h), when known"
    )
    identity: str
    known: bool
    score: float | None
    threshold: float | None
    matches: list[MatchOut]


class BatchIdentifyItem(BaseModel):
    index: int = Field(description="position of the photo in the request")
    identity: str | None = Field(None, description="the best face's answer, as /identify")
    known: bool | None = None
    score: float | None = None
    threshold: float | None = None
    matches: list[MatchOut] | None = None
    faces: list[FaceIdentifyOut] = Field(
        default_factory=list, description="one answer per face searched in the photo"
    )
    error: BatchError | None = None


class BatchIdentifyOut(BaseModel):
    model: str
    results: list[BatchIdentifyItem]


class PersonOut(BaseModel):
    id: int
    name: str
    n_images: int
    metadata: dict = Field(default_factory=dict)
    created: float = Field(description="enrollment time, seconds since the epoch")
    thumbnail: str = Field(description="URL of the person's thumbnail (404 when none)")


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


class ModelCardOut(BaseModel):
    fingerprint: str
    backend: str
    source: str
    backbone: str | None
    embedding_size: int
    image_size: int
    aligned: bool
    pair_head: bool
    threshold: dict | None = Field(description="value, target_far, method, source, tar ...")
    training: dict = Field(description="what the model file records about its training")
    validation: dict | None = Field(description="metrics on the validation identities")
    report: dict | None = Field(description="summary of the served evaluation report")
