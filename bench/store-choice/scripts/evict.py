#!/usr/bin/env python3
"""Drop the page cache of every file in the given directories (fsync, then
posix_fadvise DONTNEED), so the next read comes from the disk: a 'cold' load."""
import os
import sys

for d in sys.argv[1:]:
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if not os.path.isfile(p):
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
