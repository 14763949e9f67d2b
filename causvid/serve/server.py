"""Running the app: on a socket we bind ourselves (so the URL, with the port the OS chose for port 0, is known
before serving, and clients that connect early wait in the listen queue), either in the foreground (the CLI)
or in a background thread (tests, benchmarks)."""
import socket
import threading

import uvicorn

__all__ = ["bind", "url_of", "BackgroundServer", "run"]


def bind(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port))
    except OSError as err:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); "
                         "pick another --port (0: any free one)") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def _server(app) -> uvicorn.Server:
    # frames are already compressed images: per-message deflate would only cost time
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_per_message_deflate=False, lifespan="off"))


def run(app, sock: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C)."""
    _server(app).run(sockets=[sock])


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
