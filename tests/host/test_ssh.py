"""SSH against a real OpenSSH server on 127.0.0.1: host keys, quoting, refusals, forwards."""

from __future__ import annotations

import subprocess

import pytest

from bihost.client import AgentClient
from bihost.errors import BoardError
from bihost.inventory import Board, SshSettings
from bihost.ssh import Tunnel, connect, endpoint_for, run


def _board(sshd, known_hosts, **kw) -> Board:
    return Board(
        "pi",
        address="127.0.0.1:50051",
        transport="ssh",
        ssh=SshSettings(**sshd.ssh_settings(known_hosts, **kw)),
    )


def _fingerprint(pub) -> str:
    return subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    ).stdout.split()[1]


def test_unknown_host_key_is_refused_with_its_fingerprint_then_accepted_on_request(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    endpoint = endpoint_for(_board(sshd, known))
    with pytest.raises(BoardError) as info:
        connect(endpoint)
    message = str(info.value)
    assert f"[127.0.0.1]:{sshd.port}" in message and _fingerprint(sshd.root / "host_key.pub") in message
    assert "--accept-new-host-key" in message and not known.exists()
    connect(endpoint, accept_new_host_key=True).close()
    assert known.read_text() == sshd.known_hosts_line  # recorded the way OpenSSH writes it
    connect(endpoint).close()  # and trusted from now on, without the flag


def test_a_changed_host_key_is_always_refused(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    stranger = (sshd.root / "stranger_key.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {stranger[0]} {stranger[1]}\n")
    for accept in (False, True):
        with pytest.raises(BoardError, match="HOST KEY CHANGED") as info:
            connect(endpoint_for(_board(sshd, known)), accept_new_host_key=accept)
        assert "ssh-keygen -R" in str(info.value)


def test_an_unauthorized_key_is_refused_without_asking_for_a_password(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line)
    board = _board(sshd, known, key_file=str(sshd.root / "stranger_key"))
    with pytest.raises(BoardError, match="refused for the keys tried"):
        connect(endpoint_for(board))


def test_commands_are_quoted_word_by_word(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line)
    marker = tmp_path / "pwned"
    hostile = f"a b; touch {marker} $(touch {marker}) `touch {marker}` 'quote\" \\n"
    client = connect(endpoint_for(_board(sshd, known)))
    try:
        assert run(client, ["printf", "%s", hostile]).stdout == hostile
        assert not marker.exists()
        with pytest.raises(BoardError, match="exit 3"):
            run(client, ["sh", "-c", "exit 3"])
    finally:
        client.close()


def test_ssh_config_fills_what_the_inventory_leaves_out(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line)
    config = tmp_path / "config"
    config.write_text(
        f"Host labpi\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.key}\n  UserKnownHostsFile {known}\n"
    )
    endpoint = endpoint_for(Board("pi", address="labpi:50051", transport="ssh"), ssh_config=config)
    assert (endpoint.host, endpoint.port, endpoint.user, endpoint.known_hosts) == (
        "127.0.0.1",
        sshd.port,
        sshd.user,
        known,
    )
    connect(endpoint).close()


def test_a_port_forward_carries_the_agents_grpc(sshd, tmp_path, start_agent):
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line)
    agent = start_agent("fwd")
    client = connect(endpoint_for(_board(sshd, known)))
    try:
        with Tunnel(client, "127.0.0.1", agent.port) as tunnel:
            assert tunnel.address != agent.address
            with AgentClient(tunnel.address, "pi", timeout_s=10) as remote:
                assert remote.identity().name == "fwd"
                assert remote.push(b"through the tunnel" * 1000, "onnx").model_id
    finally:
        client.close()


@pytest.mark.parametrize("server", ["sshd", "sshd_without_sftp"])
def test_put_file_by_sftp_or_over_an_exec_channel(server, request, tmp_path):
    from bihost.ssh import put_file

    sshd = request.getfixturevalue(server)
    known = tmp_path / "known_hosts"
    client = connect(endpoint_for(_board(sshd, known)), accept_new_host_key=True)
    try:
        data = bytes(range(256)) * 4096 + b"\n'$(touch /tmp/pwned)'\n"  # binary, 1 MB, and shell-hostile
        target = tmp_path / "dir with space" / "pkg.whl"
        target.parent.mkdir()
        how = put_file(client, data, str(target), board="pi", mode=0o755)
        assert how == ("sftp" if server == "sshd" else "exec")
        assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o755
        assert not (tmp_path / "dir with space" / "pkg.whl.part").exists()
        with pytest.raises(BoardError, match="pi"):  # a folder that does not exist: a clear error
            put_file(client, b"x", str(tmp_path / "missing" / "f"), board="pi")
    finally:
        client.close()
