"""Workers' storage and BigQuery clients: one per process and endpoint, not per bundle."""

from streaming.support import clients


def test_one_storage_client_per_endpoint(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    first = clients.worker_storage_client()
    assert clients.worker_storage_client() is first  # the next bundle reuses it
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:2")
    moved = clients.worker_storage_client()
    assert moved is not first and "127.0.0.1:2" in moved._connection.API_BASE_URL


def test_one_bigquery_client_per_project_and_endpoint(monkeypatch):
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:1")
    first = clients.worker_bigquery_client(True, "p1")
    assert clients.worker_bigquery_client(True, "p1") is first
    assert clients.worker_bigquery_client(True, "p2") is not first
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:2")
    assert clients.worker_bigquery_client(True, "p1") is not first
