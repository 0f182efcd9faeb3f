"""``voxgate serve``: uvicorn with the guarded HTTP/1.1 protocol (timeouts, body rates, connection cap,
drain) in front of the app."""
