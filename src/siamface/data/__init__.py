"""Data layer: identity folders on disk, robust image decoding, splits, reports, transforms."""
