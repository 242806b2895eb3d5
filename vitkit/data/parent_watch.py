"""Imported first by the forkserver of decode workers (see vitkit.data.workers.worker_context): from then
on the server is killed when the process that started it dies.
"""

from vitkit.data.workers import die_with_parent

die_with_parent()
