"""The Milvus gallery backend: people and vectors in a Milvus server, through pymilvus.

``--gallery milvus://HOST:PORT/COLLECTION`` (or ``http(s)://HOST:PORT/COLLECTION``; a token
for servers with authentication in ``$SIAMFACE_MILVUS_TOKEN``, ``user:password`` or an API
key). Milvus Standalone, Milvus Distributed, Zilliz Cloud and milvus-lite's own server speak
the same protocol; the tests run against milvus-lite's server, started by the tests.

Three collections make one gallery ``C``:

* ``C`` (vectors): one row per image (``unit = "image"``) and one mean template per person
  and enrollment batch (``unit = "person"``; a first enrollment of a single image is one
  row with ``unit = "both"``), with the owner's name, the batch token, the source ref and
  file digest. Both units are always stored, so switching aggregation rewrites nothing.
* ``C__people`` (one row per person, primary key = name): metadata, thumbnail, the batches
  that are *committed* for them (``[[token, n_images], ...]``) and their current template.
* ``C__meta``: the settings (model fingerprint, embedding size, threshold, aggregation...).
  (Milvus requires a vector field in every collection: the last two carry a 2-d dummy.)

Creating a gallery is recoverable: ``C__meta`` is created first, with a ``creating`` journal
row, then the other two collections and the settings, and the ``format`` row is written last.
A gallery without that row (or collections of siamface's shape without ``C__meta``, left by
older versions) is *half-made*: it is never opened as a gallery, its message names the way
out, and ``siamface gallery drop URL`` or ``siamface gallery check URL --repair`` remove it
(after confirmation).

Consistency without transactions (Milvus has none across rows): an enrollment first writes
all its vectors, tagged with a batch token derived from the person's name and image
content, then *commits* by upserting the person's row, which lists the token. A search only
counts a vector whose batch its owner's row lists (and only the template the row names), so
a person becomes visible at once, with all their vectors, and a writer killed before that
upsert leaves invisible vectors only. Re-running the same enrollment recomputes the same
token and primary keys, so it overwrites those leftovers instead of duplicating them
(idempotent, keyed by image content); the next write for that name deletes any that remain.
Removal deletes the person's row first (they vanish at once), then their vectors. Calls
that fail with a transient error (server unavailable, deadline exceeded) are retried with
backoff; every write is an upsert or delete by key, so a retried call is harmless.

Across several people, ``enroll_many`` is all-or-nothing only for problems found before
writing (names, vectors, duplicates); a crash in the middle leaves some of the people
enrolled completely and the others not at all (run it again: it is idempotent). Two writers
changing the *same* person at the same moment: the last commit wins (Milvus offers no
compare-and-set); different people can be enrolled from any number of places at once.
"""
