"""The Postgres tests' gate: skip without CVP_TEST_POSTGRES_URL, fail (never skip) when it is set and nobody answers.

Runs in the default suite (no server needed): it points the gate at a closed port on loopback.
"""

from __future__ import annotations

import socket

import pytest

from tests.test_export_postgres import URL_ENV, require_server


def closed_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_fails_the_run_instead_of_skipping():
    url = f"postgresql+psycopg://cvp:secret@127.0.0.1:{closed_loopback_port()}/cvp_test"
    with pytest.raises(pytest.fail.Exception) as failed:
        require_server(url)
    message = str(failed.value)
    assert URL_ENV in message and "does not answer" in message
    assert "secret" not in message  # the password is masked


@pytest.mark.parametrize("url", [None, ""])
def test_no_url_skips(url):
    with pytest.raises(pytest.skip.Exception, match=URL_ENV):
        require_server(url)
