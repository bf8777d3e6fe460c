"""The one exception type for bad user input.

Library code raises `FacelabError` with a message that names the file, field or value at fault;
the CLI turns it into one line on stderr and a non-zero exit, never a traceback.
"""


class FacelabError(Exception):
    """Bad input (file, config field, value). The message is shown to the user as is."""
