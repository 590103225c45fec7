"""The ``weir`` command line: one command group per module, each a thin layer over the library.

Errors a user can fix (bad flags, files, values) exit 2 with one line on stderr naming what
was wrong; failures of the system exit 1.
"""
