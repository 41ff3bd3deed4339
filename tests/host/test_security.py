"""TLS, mutual TLS and bearer tokens between real agents and the host client."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import grpc
import pytest

from bihost.certs import init_ca, issue
from bihost.channel import ChannelSecurity, is_loopback
from bihost.client import AgentClient
from bihost.errors import BoardError, UserError

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    init_ca(d)
    issue(d, "agent", ["127.0.0.1", "localhost"])
    issue(d, "host", [], client=True)
    other = d / "other"
    init_ca(other, common_name="someone else's CA")
    issue(other, "host", [], client=True)
    return d


def _tls_args(pki, mutual=False):
    args = ("--tls-cert", str(pki / "agent.pem"), "--tls-key", str(pki / "agent.key"))
    return args + (("--client-ca", str(pki / "ca.pem")) if mutual else ())


def test_certs_are_private_and_never_overwritten(pki, tmp_path):
    assert stat.S_IMODE(os.stat(pki / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki / "agent.key").st_mode) == 0o600
    with pytest.raises(UserError, match="already exists"):
        init_ca(pki)
    with pytest.raises(UserError, match="exists"):
        issue(pki, "agent", ["127.0.0.1"])
    with pytest.raises(UserError, match="bihost certs init"):
        issue(tmp_path, "agent", ["127.0.0.1"])
    with pytest.raises(UserError, match="--host"):
        issue(pki, "nohost", [])


def test_tls_agent_serves_tls_clients_only(pki, start_agent):
    agent = start_agent(extra=_tls_args(pki))
    good = ChannelSecurity(ca_file=str(pki / "ca.pem"))
    with AgentClient(agent.address, "tls-board", timeout_s=10, security=good) as client:
        assert client.identity().name == "test-board"
    with AgentClient(agent.address, "tls-board", timeout_s=5) as client:  # plaintext to a TLS agent
        with pytest.raises(BoardError, match="unreachable"):
            client.identity()
    wrong_ca = ChannelSecurity(ca_file=str(pki / "other" / "ca.pem"))
    with AgentClient(agent.address, "tls-board", timeout_s=5, security=wrong_ca) as client:
        with pytest.raises(BoardError, match="TLS handshake failed"):
            client.identity()


def test_mutual_tls_demands_a_client_certificate_from_our_ca(pki, start_agent):
    agent = start_agent(extra=_tls_args(pki, mutual=True))
    ca = str(pki / "ca.pem")
    ok = ChannelSecurity(ca_file=ca, cert_file=str(pki / "host.pem"), key_file=str(pki / "host.key"))
    with AgentClient(agent.address, "mtls-board", timeout_s=10, security=ok) as client:
        assert client.list_models() == []
    for sec in (
        ChannelSecurity(ca_file=ca),  # no client certificate
        ChannelSecurity(
            ca_file=ca, cert_file=str(pki / "other" / "host.pem"), key_file=str(pki / "other" / "host.key")
        ),
    ):  # signed by another CA
        with AgentClient(agent.address, "mtls-board", timeout_s=5, security=sec) as client:
            with pytest.raises(BoardError, match="unreachable"):
                client.list_models()


def test_bearer_token_gates_every_call_but_health(tmp_path, start_agent):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    agent = start_agent(extra=("--token-file", str(token_file)))
    with AgentClient(agent.address, "tok-board", timeout_s=10) as client:
        assert client.health()  # health reveals nothing and stays open
        with pytest.raises(BoardError, match="requires a bearer token"):
            client.list_models()
    with AgentClient(
        agent.address, "tok-board", timeout_s=10, security=ChannelSecurity(token="x" * 20)
    ) as client:
        with pytest.raises(BoardError, match="not accepted"):
            client.push(b"model", "onnx")
    with AgentClient(
        agent.address, "tok-board", timeout_s=10, security=ChannelSecurity(token=TOKEN)
    ) as client:
        assert client.push(b"model bytes", "onnx").model_id
        assert len(client.list_models()) == 1
    assert TOKEN not in repr(ChannelSecurity(token=TOKEN))
    assert TOKEN not in "".join(agent.output)


def test_host_refuses_plaintext_off_loopback_unless_insecure():
    with pytest.raises(BoardError, match="refusing plaintext gRPC to 10.1.2.3:50051"):
        AgentClient("10.1.2.3:50051", "lab-board")
    AgentClient(
        "10.1.2.3:50051", "lab-board", security=ChannelSecurity(insecure=True)
    ).close()  # no call made
    AgentClient("127.0.0.1:50051", "local").close()
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("board.lab")


def _serve(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "biagent.cli", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_agent_refuses_plaintext_on_a_network_address(tmp_path):
    proc = _serve("--host", "0.0.0.0", "--store", str(tmp_path / "s"))
    assert proc.returncode == 1
    assert "refusing to serve plaintext on 0.0.0.0" in proc.stderr and "--insecure" in proc.stderr
    proc = _serve("--host", "127.0.0.1", "--store", str(tmp_path / "s"), "--tls-cert", "x.pem")
    assert proc.returncode == 1 and "go together" in proc.stderr
    short = tmp_path / "short"
    short.write_text("abc")
    proc = _serve("--store", str(tmp_path / "s"), "--token-file", str(short))
    assert proc.returncode == 1 and "at least 16 characters" in proc.stderr


def test_agent_with_insecure_serves_a_network_address(start_agent):
    agent = start_agent(extra=("--host", "0.0.0.0", "--insecure"))  # the later --host wins
    assert "plaintext" in "".join(agent.output)
    with AgentClient(f"127.0.0.1:{agent.port}", "any", timeout_s=10) as client:
        assert client.health()


def test_max_streams_refuses_a_flood_with_resource_exhausted(start_agent):
    from biproto import agent_pb2 as pb
    from biproto import agent_pb2_grpc as pb_grpc

    agent = start_agent(extra=("--max-streams", "1"))
    release = threading.Event()

    def held_push():
        yield pb.PushModelChunk(header=pb.ModelHeader(sha256="0" * 64, size_bytes=10, format="onnx"))
        release.wait(30)

    channel = grpc.insecure_channel(agent.address)
    stub = pb_grpc.AgentStub(channel)
    held: list = []
    try:
        for _ in range(50):
            if not held or held[-1].done():  # (re)start the call that holds the one slot; it loses
                held.append(stub.PushModel.future(held_push(), timeout=30))  # a race with our probe
                time.sleep(0.3)
            try:
                stub.ListModels(pb.ListModelsRequest(), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                break
            time.sleep(0.1)
        else:
            pytest.fail("a second concurrent call was never refused")
    finally:
        release.set()
        for call in held:
            try:
                call.result()
            except grpc.RpcError:
                pass  # a held upload ends short (DATA_LOSS) or lost the race (RESOURCE_EXHAUSTED)
        channel.close()
    with AgentClient(agent.address, "b", timeout_s=10) as client:  # and the agent still serves
        assert client.list_models() == []
