"""Token authentication in memory, and TLS / mutual TLS on a real loopback daemon."""

from __future__ import annotations

import datetime
import ssl
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aiServer.auth import TokenAuth, read_token_file
from bot.blocking_client import BlockingClient
from commonlib.wire import pb
from factory.client_codec import frame_envelope
from tests.daemon_process import run_daemon
from tests.support import infer, make_app
from util.config import AuthConfig, ConfigError
from util.errors import ErrorCode

TOKEN = "s3cret-token-value"
MA = [1.0, 2.0, 3.0, 4.0, 5.0]


def hello(request_id: int, token: str) -> pb.Envelope:
    return pb.Envelope(request_id=request_id, hello=pb.Hello(token=token, client_name="test"))


def test_commands_before_hello_are_unauthenticated_and_repeat_offenders_are_closed() -> None:
    app = make_app({"auth": {"tokens": [TOKEN], "max_failures": 3}})
    client = app.connect()
    client.send(infer(1, "moving_average", MA))
    client.send(pb.Envelope(request_id=2, ping=pb.Ping()))
    assert [r.error.code for r in client.replies()] == [ErrorCode.UNAUTHENTICATED] * 2
    assert not client.closed
    client.send(hello(3, "wrong"))
    (bad,) = client.replies()
    assert bad.error.code == ErrorCode.UNAUTHENTICATED and bad.error.message == "invalid token"
    assert client.closed


def test_pipelined_wrong_hellos_get_max_failures_answers_and_nothing_after() -> None:
    # All in one write: 10 wrong guesses, then the right token and a Ping. Only the
    # first max_failures guesses are answered; the close stops everything after them.
    app = make_app({"auth": {"tokens": [TOKEN], "max_failures": 3}})
    client = app.connect()
    frames = [hello(i, f"guess-{i}") for i in range(1, 11)]
    frames += [hello(11, TOKEN), pb.Envelope(request_id=12, ping=pb.Ping())]
    data = b"".join(frame_envelope(f) for f in frames)
    client.send_raw(data)
    replies = client.replies()
    assert [r.request_id for r in replies] == [1, 2, 3]
    assert {r.error.code for r in replies} == {ErrorCode.UNAUTHENTICATED}
    assert client.closed and not client.protocol.trusted
    client.send(hello(13, TOKEN))  # still arriving before the close completes: ignored
    assert client.replies() == []


def test_a_valid_hello_unlocks_the_connection_and_the_full_frame_size() -> None:
    app = make_app({"auth": {"tokens": ["other", TOKEN]}})
    client = app.connect()
    assert client.protocol.MAX_LENGTH == 4096
    client.send(hello(1, TOKEN))
    (ack,) = client.replies()
    assert ack.hello_ack.authentication_required
    assert client.protocol.MAX_LENGTH == 1_048_576
    client.send(infer(2, "moving_average", MA))
    app.settle()
    assert client.replies()[0].HasField("infer_response")


def test_pre_auth_frames_are_limited_to_4_kib() -> None:
    app = make_app({"auth": {"tokens": [TOKEN]}})
    client = app.connect()
    client.send_raw(struct.pack(">I", 4097))
    (reply,) = client.replies()
    assert reply.error.code == ErrorCode.FRAME_TOO_LARGE
    assert "pre_auth_max_frame_bytes=4096" in reply.error.message
    assert client.closed


def test_unauthenticated_connections_are_closed_at_the_deadline() -> None:
    app = make_app({"auth": {"tokens": [TOKEN], "deadline_s": 5.0}})
    slow = app.connect()
    quick = app.connect()
    quick.send(hello(1, TOKEN))
    app.clock.advance(4)
    assert not slow.closed
    app.clock.advance(1.5)
    assert slow.closed and not quick.closed
    assert slow.replies()[-1].error.code == ErrorCode.UNAUTHENTICATED
    assert app.factory.stats.timed_out_auth == 1


def test_without_tokens_hello_is_a_no_op_and_nothing_needs_it() -> None:
    app = make_app()
    client = app.connect()
    client.send(hello(1, "anything"))
    (ack,) = client.replies()
    assert not ack.hello_ack.authentication_required
    client.send(infer(2, "moving_average", MA))
    app.settle()
    assert client.replies()[0].HasField("infer_response")


def test_tokens_are_never_logged(logged_errors) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []
    observer = lambda event: seen.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)  # type: ignore[arg-type]
    try:
        app = make_app({"auth": {"tokens": [TOKEN]}})
        client = app.connect()
        client.send(hello(1, "guess-" + TOKEN))
        client = app.connect()
        client.send(hello(2, TOKEN))
    finally:
        globalLogPublisher.removeObserver(observer)  # type: ignore[arg-type]
    assert any("authenticated" in line for line in seen)
    assert not any(TOKEN in line for line in seen)


def test_token_check_and_token_file(tmp_path: Path) -> None:
    auth = TokenAuth(["a", "bb"])
    assert auth.required and auth.check("bb") and not auth.check("b") and not auth.check("")
    assert not TokenAuth([]).required
    path = tmp_path / "tokens"
    path.write_text("# game clients\nalpha\n\n  beta  \n")
    assert read_token_file(path) == ["alpha", "beta"]
    assert TokenAuth.from_config(AuthConfig(token_file=str(path))).check("beta")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no token"):
        read_token_file(tmp_path / "empty")


# -- TLS on a real daemon ------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: str,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, ca_key, "test CA", ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    out: dict[str, str] = {}
    out["ca"], _ = _write(tmp_path / "ca", ca, ca_key)
    out["cert"], out["key"] = _write(
        tmp_path / "server", _cert("localhost", server_key, ca_key, "test CA", False), server_key
    )
    out["client_cert"], out["client_key"] = _write(
        tmp_path / "client", _cert("game-client", client_key, ca_key, "test CA", False), client_key
    )
    return out


def _client_context(pki: dict[str, str], with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"])
    if with_cert:
        context.load_cert_chain(pki["client_cert"], pki["client_key"])
    return context


@pytest.mark.parametrize("workers", [1, 2])
def test_tls_serves_the_same_protocol(tmp_path: Path, pki: dict[str, str], workers: int) -> None:
    # With workers, the handshake runs in the worker the connection is handed to.
    tls_config = {"enabled": True, "cert": pki["cert"], "key": pki["key"]}
    config = {"server": {"tls": tls_config, "workers": workers}}
    with run_daemon(tmp_path, config) as daemon:
        tls = _client_context(pki, with_cert=False)
        with BlockingClient("localhost", daemon.tcp_port, tls=tls) as client:
            reply = client.infer("moving_average", MA, request_id=4)
            assert reply.HasField("infer_response")
        with BlockingClient("127.0.0.1", daemon.tcp_port) as plain:  # no TLS: no answer
            plain.send(pb.Envelope(request_id=1, ping=pb.Ping()))
            with pytest.raises((ConnectionError, OSError)):
                plain.receive()


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, pki: dict[str, str]) -> None:
    tls_config = {"enabled": True, "cert": pki["cert"], "key": pki["key"], "client_ca": pki["ca"]}
    with run_daemon(tmp_path, {"server": {"tls": tls_config}}) as daemon:
        with BlockingClient("localhost", daemon.tcp_port, tls=_client_context(pki, True)) as client:
            assert client.request(pb.Envelope(request_id=1, ping=pb.Ping())).HasField("pong")
        anonymous = BlockingClient("localhost", daemon.tcp_port, tls=_client_context(pki, False))
        try:
            with pytest.raises((ConnectionError, OSError)):
                anonymous.request(pb.Envelope(request_id=2, ping=pb.Ping()))
        finally:
            anonymous.close()


def test_tls_config_errors_name_the_key(tmp_path: Path) -> None:
    from util.config import parse_config

    with pytest.raises(
        ConfigError, match=r"server\.tls: TLS is enabled but cert or key is not set"
    ):
        parse_config({"server": {"tls": {"enabled": True}}})
    from aiServer.tls import server_tls_options
    from util.config import TlsConfig

    with pytest.raises(ConfigError, match="cannot read"):
        server_tls_options(TlsConfig(enabled=True, cert=str(tmp_path / "no.crt"), key="x"))


def test_a_tls_handshake_trickled_byte_by_byte_is_dropped_at_its_deadline(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    import socket
    import time

    tls_config = {"enabled": True, "cert": pki["cert"], "key": pki["key"]}
    tls_config["handshake_timeout_s"] = 1.0
    with run_daemon(tmp_path, {"server": {"tls": tls_config}}) as daemon:
        # A real ClientHello, sent one byte at a time.
        context = _client_context(pki, with_cert=False)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        client_hello = outgoing.read()
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", daemon.tcp_port)) as sock:
            sock.settimeout(0.25)
            closed_after = None
            for byte in client_hello[:40]:
                try:
                    sock.sendall(bytes([byte]))
                    if sock.recv(1) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None and closed_after < 4.0
        with BlockingClient("localhost", daemon.tcp_port, tls=context) as client:
            assert client.request(pb.Envelope(request_id=1, ping=pb.Ping())).HasField("pong")
