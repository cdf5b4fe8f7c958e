"""Faces in video: files, folders of frames, webcams and network streams, every face in each
frame detected, tracked and identified against a gallery. See docs/watch.md.

Modules, one job each: ``source`` (frames, reconnection), ``faces`` (detect, align, embed a
frame's faces in one batch), ``quality`` (how much a face counts), ``tracking`` (norfair),
``identity`` (a track's name from its accumulated evidence), ``pipeline`` (the loop and its
events), ``render`` (boxes and names drawn, video and MJPEG output).
"""

from siamface.video.pipeline import Watcher, WatchOptions, watch
from siamface.video.source import SourceError, VideoSource, parse_source

__all__ = ["SourceError", "VideoSource", "WatchOptions", "Watcher", "parse_source", "watch"]
