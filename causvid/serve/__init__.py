"""A live server for causal students: `python -m causvid.serve` (see `__main__`), FastAPI + uvicorn.

`app` (routes and the WebSocket protocol of docs/serve.md) -> `live` (one viewer's generation thread, pacing
and frame queue, no web code) -> `causvid.pipelines.stream.StreamSession`. `server` runs the app on a socket.
"""
