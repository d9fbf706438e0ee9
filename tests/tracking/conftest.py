"""A real `mlflow server` on 127.0.0.1 and a free port: one per module, or unstarted ones that
a test starts and kills itself (the outage tests)."""
import pytest

from hydra_dist.tracking.local_server import LocalMlflowServer


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = LocalMlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    yield server
    server.stop()


@pytest.fixture
def server_factory(tmp_path):
    """A server with its own store and port, not started yet."""
    servers = []

    def make() -> LocalMlflowServer:
        servers.append(LocalMlflowServer(tmp_path / f"server{len(servers)}"))
        return servers[-1]
    yield make
    for s in servers:
        s.stop()
