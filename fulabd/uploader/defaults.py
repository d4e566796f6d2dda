"""
Defaults that `fulab-upload --help` shows, here rather than in the modules
that use them so that printing the help imports neither Twisted nor Autobahn.
"""

PING_INTERVAL = 20
