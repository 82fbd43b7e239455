"""Offices where the only way out is a proxy, and where TLS is inspected with a company CA.

`ocrwatch submit` runs as a subprocess with the environment a user would set; the proxy is a real
forwarding proxy on loopback, and for HTTPS the emulator serves TLS with a test CA's certificate.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from ocrwatch.emulator import Emulator

from .conftest import CLIENT_ID, SECRET, cli_env, write_config
from .images import write_png
from .proxy import forwarding_proxy
from .test_cli import run


@pytest.fixture
def tls_emulator(tmp_path) -> Iterator[tuple[Emulator, Path]]:
    """The emulator on HTTPS, and the CA bundle that trusts it."""
    ca = trustme.CA()
    server = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    bundle = tmp_path / "company-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with Emulator(
        client_id=CLIENT_ID, client_secret=SECRET, tls=(server, server)
    ) as emu:
        yield emu, bundle


def closed_port_url() -> str:
    """A proxy URL where nothing listens: using it would fail."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def images(inbox: Path, n: int = 3) -> None:
    for i in range(n):
        write_png(inbox / f"s{i}.png", i)


def test_https_proxy_and_ca_bundle_from_the_environment(tmp_path, inbox, tls_emulator):
    """HTTPS_PROXY and REQUESTS_CA_BUNDLE are honoured: the uploads go through the proxy's
    CONNECT tunnel to a server only the company CA vouches for."""
    emulator, bundle = tls_emulator
    images(inbox)
    config = write_config(tmp_path / "c.yaml", emulator.url, [{"path": str(inbox)}])
    with forwarding_proxy() as (proxy, seen):
        env = cli_env(HTTPS_PROXY=proxy, REQUESTS_CA_BUNDLE=str(bundle))

        result = run("submit", "-c", str(config), str(inbox), env=env)

    host = emulator.url.removeprefix("https://")
    assert (0, 3) == (result.returncode, len(emulator.submissions()))
    assert {("CONNECT", host)} == set(seen)


def test_without_the_ca_bundle_nothing_is_sent(tmp_path, inbox, tls_emulator):
    """The same server without the company CA: TLS verification fails, nothing is sent, the
    files stay queued for later."""
    emulator, _ = tls_emulator
    images(inbox, 1)
    config = write_config(
        tmp_path / "c.yaml",
        emulator.url,
        [{"path": str(inbox)}],
        api={"retry": {"max_attempts": 2, "max_delay": 0.1}},
    )

    result = run("submit", "-c", str(config), str(inbox), env=cli_env())

    assert (1, []) == (result.returncode, emulator.submissions())
    assert (
        "its TLS certificate could not be verified; if a proxy inspects TLS, set "
        in (result.stdout)
    )


def test_api_proxy_with_credentials_wins_over_the_environment(
    tmp_path, inbox, emulator
):
    """api.proxy is used even though HTTP_PROXY points elsewhere; its password, a secret,
    appears nowhere in the output."""
    images(inbox)
    with forwarding_proxy(credentials="office:pr0xy-Pa55word") as (proxy, seen):
        with_credentials = proxy.replace("http://", "http://office:pr0xy-Pa55word@")
        config = write_config(
            tmp_path / "c.yaml",
            emulator.url,
            [{"path": str(inbox)}],
            api={"proxy": with_credentials},
        )
        env = cli_env(HTTP_PROXY=closed_port_url())

        result = run(
            "submit", "-c", str(config), "--log-level", "debug", str(inbox), env=env
        )
        checked = run("check", "-c", str(config), env=env)

    methods = sorted({(method, target.split("?")[0]) for method, target in seen})
    assert (0, 3) == (result.returncode, len(emulator.submissions()))
    assert [
        ("POST", f"{emulator.url}/connect/token"),
        ("POST", f"{emulator.url}/v5.0/ocr/RecognizeImage"),
    ] == methods
    output = result.stdout + result.stderr + checked.stdout + checked.stderr
    assert "pr0xy-Pa55word" not in output


def test_no_proxy_exempts_the_service(tmp_path, inbox, emulator):
    """NO_PROXY naming the service's host: the proxy in HTTP_PROXY (dead here) is not used."""
    images(inbox, 1)
    config = write_config(tmp_path / "c.yaml", emulator.url, [{"path": str(inbox)}])
    env = cli_env(HTTP_PROXY=closed_port_url(), NO_PROXY="127.0.0.1")

    result = run("submit", "-c", str(config), str(inbox), env=env)

    assert (0, 1) == (result.returncode, len(emulator.submissions()))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"REQUESTS_CA_BUNDLE": "/nonexistent/ca.pem"},
            "ocrwatch: REQUESTS_CA_BUNDLE: /nonexistent/ca.pem is not a file",
            id="missing-ca-bundle",
        ),
        pytest.param(
            {"HTTP_PROXY": "socks5://127.0.0.1:1080"},
            "ocrwatch: the environment's proxy for 127.0.0.1",
            id="socks-in-the-environment",
        ),
    ],
)
def test_environment_mistakes_are_one_sentence_and_exit_2(
    tmp_path, inbox, emulator, env, expected
):
    """A CA bundle that is not there, or a SOCKS proxy: one sentence naming it, exit 2,
    nothing sent; not a traceback per file."""
    images(inbox, 1)
    config = write_config(tmp_path / "c.yaml", emulator.url, [{"path": str(inbox)}])

    result = run("submit", "-c", str(config), str(inbox), env=cli_env(**env))

    assert (2, []) == (result.returncode, emulator.submissions())
    assert [expected] == [
        line[: len(expected)]
        for line in result.stderr.splitlines()
        if line.startswith("ocrwatch:")
    ]
