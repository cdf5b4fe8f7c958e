"""``siamface gallery ACTION``: manage a face gallery for 1:N identification.

One module per action (``enroll``, ``remove``, ``listing`` for ``list``, ``settings`` for
``set``, ``migrate``, ``check``, ``drop``), each adding its parser with ``add_parser``;
what they share is in :mod:`siamface.cli.gallery._shared`. This module only builds the
``gallery`` parser and its help, in the order ``siamface gallery --help`` lists them.
"""

from __future__ import annotations

import argparse

from siamface.cli.gallery import check, drop, enroll, listing, migrate, remove, settings

EPILOG = """\
A gallery is a folder (SQLite database + vector index), or a collection on a Milvus server
(milvus://HOST:PORT/COLLECTION), tied to one model: enrollments and probes from any other
model are refused. The first 'enroll' creates it. 'migrate' copies a gallery between the two.

examples:
  siamface gallery enroll staff --model runs/pins people/            # people/<name>/<images>
  siamface gallery enroll staff --name "Ada Lovelace" ada1.jpg ada2.jpg
  siamface gallery enroll staff --name ada --append ada3.jpg         # more images of ada
  siamface gallery list staff
  siamface gallery remove staff ada
  siamface gallery set staff --threshold 0.45                        # open-set threshold
  siamface identify staff probe.jpg --top-k 5
  siamface gallery migrate staff milvus://db.example.org:19530/staff   # to a Milvus server
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gallery",
        help="enroll, remove and list people in a face gallery (1:N)",
        description="Manage a face gallery: a folder of enrolled people searched by "
        "'siamface identify'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gs = p.add_subparsers(dest="gallery_command", metavar="ACTION")
    for action in (enroll, remove, listing, settings, migrate, check, drop):
        action.add_parser(gs)
    p.set_defaults(func=lambda args: _no_action(p))


def _no_action(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2
