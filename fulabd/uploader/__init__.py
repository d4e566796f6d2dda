"""`fulab-upload`: the laptop side.  Session files are tailed and sent, exactly once, to a fulabd server."""
