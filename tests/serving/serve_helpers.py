"""Start a real server on 127.0.0.1 with an ephemeral port, in a background thread, over a loaded model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace


@contextmanager
def running_server(app) -> Iterator[str]:
    """Run `app` under uvicorn in a thread; yields its root URL, stops it on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # A long keep-alive: with uvicorn's 5 s default, a loaded machine can close an idle pooled connection
    # just as the client reuses it ("connection reset by peer"), a race of the test set-up, not the server.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=600)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def start(hf_model, backend_options: dict | None = None, **app_options):
    """A context manager giving a namespace with the app, its URLs and an `openai` client."""
    import openai

    from serving import HFBackend, create_app

    @contextmanager
    def context():
        backend = HFBackend(hf_model, **(backend_options or {}))
        app = create_app(backend, served_name="default", **app_options)
        with running_server(app) as url:
            client = openai.OpenAI(
                base_url=f"{url}/v1",
                api_key=app_options.get("api_key") or "EMPTY",
                max_retries=0,
                timeout=120,
            )
            yield SimpleNamespace(app=app, url=url, base_url=f"{url}/v1", client=client, state=app.state.dln)
            client.close()

    return context()
