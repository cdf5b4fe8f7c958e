"""Identity folders on disk: which image files belong to whom, decoded safely, split by person.

First layer of the flow (folders -> faces -> tensors -> embed -> scores -> decide); it imports
nothing of siamface but the shared basics (errors, file writing, digests, machine facts).
"""
