"""The service's defaults and choices, in a module light enough for ``siamface --help``
(no FastAPI import): the CLI derives its options from these."""

DEFAULT_MAX_UPLOAD_MB = 10.0
#: Largest decoded image accepted (a small PNG can expand to gigabytes of pixels).
DEFAULT_MAX_PIXELS = 40_000_000
#: Pixels decoded at once across all requests (~200 MB of RGB): bounds the server's memory.
DEFAULT_MAX_PIXELS_IN_FLIGHT = 64_000_000
#: How long an upload may wait for its turn to decode before the answer is 503 busy.
DEFAULT_DECODE_WAIT_S = 30.0
#: ``auto``: batch concurrent requests into one model call on GPU (pays), not on CPU (0.82x).
BATCHING_MODES = ("auto", "on", "off")
