"""provisioners.proxmox when PVE (or what answers in its place) misbehaves: every failure is a
DeployError with a short reason, never a raw requests exception, and never shows a secret."""
from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from provisioners.errors import DeployError
from provisioners.proxmox import Credentials, PveApiError, PveUnreachable, brief, connect
from provisioners.vm import plan_vm, preflight
from tests.conftest import ROOT_PASSWORD, TOKEN_SECRET

NODE = "pve1"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reads_that_keep_failing_end_in_a_deploy_error_not_a_requests_exception(pve_token, lab_catalog, gpupve):
    # The connection closes before every answer of this path (PVE went away mid-run).
    gpupve.lose_response("GET", f"/nodes/{NODE}/hardware/pci", times=100)
    with pytest.raises(PveUnreachable) as info:
        preflight(pve_token, lab_catalog, lab_catalog.vm(140))
    text = str(info.value)
    assert text.splitlines()[0] == f"PVE at {pve_token.endpoint} did not answer GET /nodes/{NODE}/hardware/pci"
    assert "RemoteDisconnected: Remote end closed connection without response (6 tries)" in text
    assert "HTTPSConnectionPool" not in text and TOKEN_SECRET not in text


def test_closed_port_is_one_short_reason(lab_catalog, fast_retry):
    url = f"https://127.0.0.1:{_closed_port()}"
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, endpoint=url, credentials=Credentials("root@pam", password=ROOT_PASSWORD),
                retry=fast_retry)
    assert str(info.value).splitlines()[:2] == [f"cannot reach the Proxmox API at {url}",
                                                "  cause: [Errno 111] Connection refused"]
    assert ROOT_PASSWORD not in str(info.value)


def test_closed_port_retries_log_short_reasons(lab_catalog, fast_retry, caplog):
    with pytest.raises(DeployError):
        connect(lab_catalog, endpoint=f"https://127.0.0.1:{_closed_port()}",
                credentials=Credentials("root@pam", password=ROOT_PASSWORD), retry=fast_retry)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries and all(m.startswith("login: [Errno 111] Connection refused; retry") for m in retries)


def test_proxy_html_error_page_is_shown_as_text(pve_token, gpupve):
    gpupve.fail("GET", f"/nodes/{NODE}/hardware/pci", 502, "Bad Gateway", html=True)
    with pytest.raises(PveApiError) as info:
        pve_token.get(f"/nodes/{NODE}/hardware/pci")
    cause = info.value.cause
    assert cause.startswith("PVE answered HTTP 502: Bad Gateway")
    assert "b'" not in cause and "<" not in cause and "{'errors'" not in cause


def test_brief_reasons():
    assert brief(requests.exceptions.ReadTimeout("HTTPSConnectionPool(...): Read timed out. (read timeout=30)")) == \
        "ReadTimeout: no answer within the HTTP timeout"
    err = requests.exceptions.ConnectionError("('Connection aborted.', ConnectionResetError(104, 'Connection reset'))")
    assert brief(err) == "ConnectionResetError: Connection reset"  # no pool/adapter text


@pytest.fixture
def not_pve(pve_pki):
    """An https server on loopback that answers every request with a 200 HTML page (a captive
    portal or another web server where proxmox.endpoint points)."""

    class Handler(BaseHTTPRequestHandler):
        def _page(self):
            body = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pve_pki)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_endpoint_that_is_not_pve_is_explained(lab_catalog, fast_retry, not_pve):
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, endpoint=not_pve, credentials=Credentials("root@pam", password=ROOT_PASSWORD),
                retry=fast_retry)
    text = str(info.value)
    assert text.startswith(f"login to {not_pve} failed")
    assert "proxmox.endpoint is the PVE API" in text and ROOT_PASSWORD not in text


def test_plan_read_failure_reaches_the_cli_as_a_deploy_error(pve_token, lab_catalog, gpupve):
    gpupve.lose_response("GET", "/cluster/resources", times=100)
    with pytest.raises(DeployError, match="did not answer GET /cluster/resources"):
        plan_vm(pve_token, lab_catalog, lab_catalog.vm(140))


@pytest.fixture
def env_clean(monkeypatch):
    for name in ("PROXMOX_USER", "PROXMOX_TOKEN_NAME", "PROXMOX_TOKEN_ID", "PROXMOX_TOKEN_SECRET",
                 "PROXMOX_PASSWORD", "DEPLOYER_SECRETS_FILE", "PROXMOX_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_token_secret_with_a_pasted_line_break_still_logs_in(env_clean, lab_catalog, fast_retry):
    env_clean.setenv("PROXMOX_TOKEN_ID", "deployer@pve!ci")
    env_clean.setenv("PROXMOX_TOKEN_SECRET", TOKEN_SECRET + "\n")  # e.g. $(cat file) of an editor-saved file
    client = connect(lab_catalog, retry=fast_retry)
    assert client.credentials.token_secret == TOKEN_SECRET
    assert client.get("/version")


@pytest.mark.parametrize("secret", ["tok en-with-blank", "s\u00e9cret\u79d8"])
def test_token_secret_a_header_cannot_carry_is_refused_by_name(env_clean, lab_catalog, fast_retry, secret):
    env_clean.setenv("PROXMOX_TOKEN_ID", "deployer@pve!ci")
    env_clean.setenv("PROXMOX_TOKEN_SECRET", secret)
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, retry=fast_retry)
    assert str(info.value).startswith("PROXMOX_TOKEN_SECRET contains characters an HTTP header cannot carry")
    assert secret not in str(info.value)


def test_header_error_never_quotes_the_header(lab_catalog, fast_retry):
    # Past the environment checks (a Credentials built in code): http.client refuses the header
    # with a ValueError whose text is the whole Authorization header, secret included.
    secret = TOKEN_SECRET + "\nX"
    creds = Credentials("deployer@pve", token_name="ci", token_secret=secret)
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, credentials=creds, retry=fast_retry)
    text = str(info.value)
    assert "could not be sent" in text and TOKEN_SECRET not in text and "PVEAPIToken" not in text


def test_token_id_without_the_token_part_is_explained(env_clean, lab_catalog, fast_retry):
    env_clean.setenv("PROXMOX_TOKEN_ID", "deployer@pve")
    env_clean.setenv("PROXMOX_TOKEN_SECRET", TOKEN_SECRET)
    with pytest.raises(DeployError, match="bad PROXMOX_TOKEN_ID") as info:
        connect(lab_catalog, retry=fast_retry)
    assert "USER@REALM!TOKENID" in str(info.value) and TOKEN_SECRET not in str(info.value)


def test_wrong_ca_names_the_tls_reason_in_brief(lab_catalog, fast_retry, tmp_path):
    from fakepve.certs import make_cert
    other_ca = make_cert(str(tmp_path), hosts=("127.0.0.1",))[0]  # a CA that did not sign the fake's cert
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, ca_file=other_ca, credentials=Credentials("root@pam", password=ROOT_PASSWORD),
                retry=fast_retry)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("TLS verification of https://127.0.0.1:")
    assert lines[1] == "  cause: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"


@pytest.mark.parametrize("secret", [" " + TOKEN_SECRET, TOKEN_SECRET + "\r\nX-Injected: 1", TOKEN_SECRET + "\u79d8"])
def test_no_header_error_quotes_the_secret(lab_catalog, fast_retry, secret):
    creds = Credentials("deployer@pve", token_name="ci", token_secret=secret)
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, credentials=creds, retry=fast_retry)
    text = str(info.value)
    assert TOKEN_SECRET not in text and "PVEAPIToken" not in text


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_endpoint_reaches_pve(tmp_path, lab_catalog, fast_retry):
    from fakepve.certs import make_cert

    from lab.gpupve import GpuFakePve, ServedPve
    cert, key = make_cert(str(tmp_path), hosts=("::1",))[:2]
    pve = GpuFakePve(profile="rtx5060ti", user="root@pam", password=ROOT_PASSWORD, host="::1", port=0)
    served = ServedPve(pve, cert, key)
    try:
        url = f"https://[::1]:{pve.port}"  # proxmoxer once received "::1:PORT" and asked [::1:PORT]:8006
        client = connect(lab_catalog, endpoint=url, ca_file=cert, retry=fast_retry,
                         credentials=Credentials("root@pam", password=ROOT_PASSWORD))
        assert client.get("/version")["release"]
    finally:
        served.stop()


@pytest.mark.parametrize("content", [b"", b"hello\n", b"-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"])
def test_ca_file_without_a_certificate_is_named(lab_catalog, fast_retry, tmp_path, content):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(content)
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, ca_file=str(ca), credentials=Credentials("root@pam", password=ROOT_PASSWORD),
                retry=fast_retry)
    assert str(info.value).splitlines()[:2] == ["proxmox.ca_file holds no PEM certificate", f"  cause: {ca}"]


def test_token_login_to_an_endpoint_that_is_not_pve_is_explained(lab_catalog, fast_retry, not_pve):
    # A token login sends no request until the first call; the 200 HTML page must not pass for PVE.
    creds = Credentials("deployer@pve", token_name="ci", token_secret=TOKEN_SECRET)
    with pytest.raises(DeployError) as info:
        connect(lab_catalog, endpoint=not_pve, credentials=creds, retry=fast_retry)
    text = str(info.value)
    assert text.startswith(f"GET /version: {not_pve} answered with a page that is not JSON, not the PVE API")
    assert TOKEN_SECRET not in text
