"""Running the app: on a socket we bind ourselves (so the URL, with the port the OS chose for port 0, is known
before serving, and clients that connect early wait in the listen queue), either in the foreground (the CLI)
or in a background thread (tests, benchmarks). `bind` needs no uvicorn: the command line binds before anything
heavy loads."""
import os
import socket
import threading

__all__ = ["bind", "url_of", "BackgroundServer", "run"]


def bind(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port))
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({reason}); "
                         "pick another --port (0: any free one)") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def _server(app):
    """A uvicorn.Server for `app`. Frames are already compressed images: per-message deflate would only cost
    time. The WebSocket layer reads messages up to `hard_limit` bytes (the app refuses those over its own limit
    with an error event and goes on); a larger one closes the connection (1009)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_per_message_deflate=False, lifespan="off",
                                         ws_max_size=hard_limit(app.state.options.max_message_bytes)))


def hard_limit(max_message_bytes: int) -> int:
    """The largest message the WebSocket layer reads at all: 16 x the app's limit, at least 64 KiB."""
    return max(16 * max_message_bytes, 64 * 1024)


def run(app, sock: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C), then return."""
    try:
        _server(app).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: here that is the normal end
        pass


class BackgroundServer:
    """`with BackgroundServer(app) as url:` serves `app` on 127.0.0.1 at a free port in a thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = _server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()
