"""A real RTSP server for the watch tests: GStreamer's gst-rtsp-server serving an MP4 clip.

Run with Debian's python (``/usr/bin/python3``, which has the ``gi`` bindings; the project's
venv does not): ``python3 rtsp_server.py CLIP.mp4 PORT``; the stream is
``rtsp://127.0.0.1:PORT/live``. Each client gets the clip from its start, paced in real time
(H.264 repacketised, not re-encoded). Prints ``ready`` once it listens.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    clip, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{clip}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {port}", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
