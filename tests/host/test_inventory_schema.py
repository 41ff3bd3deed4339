"""The inventory schema: the shipped file loads, bad entries fail naming board and key,
saving is atomic and round-trips, and agent identities are matched against entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bihost.errors import UserError
from bihost.inventory import (
    Board,
    Inventory,
    InventoryError,
    SshSettings,
    UnknownBoard,
    default_inventory_path,
    expected_identity,
    identity_mismatch,
    parse_address,
)

SHIPPED = Path(__file__).parents[2] / "inventory.yaml"
PAPER_CHIPS = {
    "kirin970",
    "kirin980",
    "kirin985",
    "kirin990",
    "kirin9000",
    "dimensity820",
    "dimensity9000",
    "snapdragon855plus",
    "snapdragon870",
    "snapdragon888",
    "snapdragon8gen1",
    "raspberrypi3bplus",
    "raspberrypi4b",
    "apple_m1",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def one_board(tmp_path: Path, entry: str) -> Path:
    """An inventory holding board 'x' whose entry is `entry` (YAML lines, indented by the caller)."""
    return write(tmp_path, "version: 1\nboards:\n  x:\n" + entry)


# -- the shipped file ------------------------------------------------------------------------


def test_shipped_inventory_has_the_papers_chips_and_local():
    inv = Inventory.load(SHIPPED)
    assert set(inv.names()) == PAPER_CHIPS | {"local"}
    local = inv.get("local")
    assert local.address == "embedded" and local.arch == "native"
    kirin = inv.get("kirin970")
    assert kirin.soc == "HiSilicon Kirin 970" and kirin.arch == "arm64" and kirin.transport == "grpc"
    assert kirin.cpu_clusters == ["4x Cortex-A73 @ 2.36", "4x Cortex-A53 @ 1.80"]
    assert kirin.runtimes == ["larq", "dabnn", "custom"]
    assert all(b.address is None for b in inv.boards() if b.name != "local")


def test_shipped_inventory_saves_to_the_same_text(tmp_path):
    inv = Inventory.load(SHIPPED)
    out = tmp_path / "inventory.yaml"
    inv.save(out)
    assert out.read_text() == SHIPPED.read_text()


# -- validation: one error naming the board and the key --------------------------------------


@pytest.mark.parametrize(
    "entry, key, words",
    [
        ("    adress: 10.0.0.5:50051\n", "adress", "unknown key 'adress' (known keys: soc, arch"),
        ("    address: foo\n", "address", "address 'foo' is not HOST:PORT"),
        ("    address: 10.0.0.5:70000\n", "address", "port 70000 out of range"),
        ("    address: 10.0.0.5:0\n", "address", "port 0 out of range"),
        ("    address: '::1:50051'\n", "address", "is not HOST:PORT"),
        ("    address: '[zz::1]:50051'\n", "address", "is not HOST:PORT"),
        ("    address: 50051\n", "address", "address must be a string"),
        (
            "    runtimes: [larq, tflite]\n",
            "runtimes",
            "unknown runtime 'tflite' (known: custom, larq, dabnn",
        ),
        ("    runtimes: larq\n", "runtimes", "runtimes must be a list of strings"),
        ("    arch: riscv64\n", "arch", "unknown arch 'riscv64' (known: arm64, armv7, x86_64, native)"),
        ("    transport: telnet\n", "transport", "unknown transport 'telnet'"),
        ("    soc: 970\n", "soc", "soc must be a string"),
        ("    cpu: [4x Cortex-A53]\n", "cpu", "cpu must be a mapping"),
        ("    cpu: {cluster: [4x Cortex-A53]}\n", "cpu.cluster", "unknown key 'cpu.cluster'"),
        ("    cpu: {clusters: [Cortex-A53]}\n", "cpu", "cpu.clusters[0] 'Cortex-A53' is not 'Nx CORE @ GHz'"),
        ("    ssh: {hots: pi}\n", "ssh.hots", "unknown key 'ssh.hots'"),
        ("    ssh: {port: '22'}\n", "ssh.port", "ssh.port must be an integer"),
        ("    ssh: {port: 70000}\n", "ssh.port", "ssh.port 70000 out of range"),
        ("    ssh: {user: 7}\n", "ssh.user", "ssh.user must be a string"),
        ("    expected: {cores: eight}\n", "expected.cores", "expected.cores must be an integer"),
        ("    expected: {speed: 3}\n", "expected.speed", "unknown key 'expected.speed'"),
    ],
)
def test_bad_entry_names_board_and_key(tmp_path, entry, key, words):
    path = one_board(tmp_path, entry)
    with pytest.raises(InventoryError) as err:
        Inventory.load(path)
    assert err.value.board == "x" and err.value.key == key
    assert str(err.value).startswith(f"{path}: board 'x': ")
    assert words in str(err.value)
    assert isinstance(err.value, UserError)  # the CLI prints one line and exits 1


@pytest.mark.parametrize("name", ["Kirin970", "-x", "a b", "x" * 64, "kirin/970"])
def test_bad_board_names_are_refused(tmp_path, name):
    with pytest.raises(InventoryError, match="invalid board name") as err:
        Inventory.load(write(tmp_path, f"version: 1\nboards:\n  '{name}': {{arch: arm64}}\n"))
    assert err.value.key == "name"


def test_numeric_board_name_asks_for_quotes(tmp_path):
    with pytest.raises(InventoryError, match="quote it"):
        Inventory.load(write(tmp_path, "version: 1\nboards:\n  970: {arch: arm64}\n"))


@pytest.mark.parametrize(
    "text, words",
    [
        ("boards: {}\n", "missing 'version'"),
        ("version: 2\nboards: {}\n", "version 2 is not supported"),
        ("version: '1'\nboards: {}\n", "version '1' is not supported"),
        ("version: 1\nboard: {}\n", "unknown top-level key 'board'"),
        ("version: 1\nboards: [kirin970]\n", "'boards' must be a mapping"),
        ("- version: 1\n", "must be a mapping"),
        ("version: 1\nboards: {x: [\n", "not valid YAML"),
        ("version: 1\nboards:\n  x: arm64\n", "board 'x': entry must be a mapping"),
    ],
)
def test_bad_file_shape(tmp_path, text, words):
    with pytest.raises(InventoryError) as err:
        Inventory.load(write(tmp_path, text))
    assert words in str(err.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(InventoryError, match="no such inventory file"):
        Inventory.load(tmp_path / "nope.yaml")


def test_empty_inventory_is_fine(tmp_path):
    assert Inventory.load(write(tmp_path, "version: 1\nboards:\n")).boards() == []


# -- duplicate keys: PyYAML would silently keep the last one -----------------------------------


def test_duplicate_board_name_reports_its_lines(tmp_path):
    path = write(
        tmp_path, "version: 1\nboards:\n  kirin970: {arch: arm64}\n  other: {}\n  kirin970: {arch: armv7}\n"
    )
    with pytest.raises(InventoryError) as err:
        Inventory.load(path)
    assert str(err.value) == f"{path}: duplicate board name 'kirin970' at line 5 (first at line 3)"


def test_duplicate_key_inside_a_board_names_board_and_key(tmp_path):
    path = one_board(tmp_path, "    soc: a\n    ssh: {port: 22, port: 23}\n")
    with pytest.raises(InventoryError, match=r"board 'x': duplicate key 'ssh.port' at line 5") as err:
        Inventory.load(path)
    assert err.value.board == "x" and err.value.key == "ssh.port"


def test_duplicate_top_level_key(tmp_path):
    with pytest.raises(InventoryError, match="duplicate key 'version' at line 2 .first at line 1."):
        Inventory.load(write(tmp_path, "version: 1\nversion: 1\nboards: {}\n"))


# -- add / get / remove -------------------------------------------------------------------------


def test_get_unknown_board_lists_known_names():
    inv = Inventory.load(SHIPPED)
    with pytest.raises(
        UnknownBoard, match="unknown board 'kirin971' .known boards: local, kirin970, kirin980"
    ):
        inv.get("kirin971")


def test_add_duplicate_and_remove():
    inv = Inventory()
    inv.add(Board("pi", arch="arm64", address="10.0.0.5:50051"))
    with pytest.raises(InventoryError, match="duplicate board name 'pi'"):
        inv.add(Board("pi"))
    assert inv.remove("pi").address == "10.0.0.5:50051" and inv.boards() == []
    with pytest.raises(UnknownBoard):
        inv.remove("pi")


def test_boards_validate_themselves_outside_yaml():
    with pytest.raises(InventoryError, match="board 'x': address 'foo' is not HOST:PORT"):
        Board("x", address="foo")
    with pytest.raises(InventoryError, match="board 'x': port 70000 out of range"):
        Board("x", address="h:70000")


@pytest.mark.parametrize(
    "address, expected",
    [
        ("10.0.0.5:50051", ("10.0.0.5", 50051)),
        ("pi4.lab:1", ("pi4.lab", 1)),
        ("[::1]:50051", ("::1", 50051)),
        ("[fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
    ],
)
def test_parse_address(address, expected):
    assert parse_address(address) == expected


# -- saving: atomic, round trip, header kept ----------------------------------------------------


def full_inventory() -> Inventory:
    inv = Inventory.load(SHIPPED)
    inv.add(
        Board(
            "pi5",
            soc="Broadcom BCM2712",
            arch="arm64",
            os="linux",
            cpu_clusters=["4x Cortex-A76 @ 2.40"],
            runtimes=["larq", "onnxruntime"],
            address="[fe80::1]:50051",
            transport="ssh",
            ssh=SshSettings(host="pi5.lab", user="pi", key_file="~/.ssh/id_ed25519"),
            description="desk: 'left' #2",
            expected={"machine": "aarch64", "cores": 4, "core_types": ["Cortex-A76"] * 4},
        )
    )
    return inv


def test_round_trip_keeps_every_field_and_the_header(tmp_path):
    path = write(
        tmp_path, "# my lab\n#  second line\n\nversion: 1\nboards:\n  x: {arch: armv7}  # trailing comment\n"
    )
    inv = Inventory.load(path)
    assert inv.header == "# my lab\n#  second line\n\n"
    for board in full_inventory().boards():
        inv.add(board)
    inv.save(path)
    again = Inventory.load(path)
    assert again == inv
    assert path.read_text().startswith("# my lab\n#  second line\n\nversion: 1\n")
    assert again.get("pi5").expected == {"machine": ["aarch64"], "cores": 4, "core_types": ["Cortex-A76"] * 4}
    assert again.get("pi5").ssh == SshSettings(
        host="pi5.lab", port=22, user="pi", key_file="~/.ssh/id_ed25519"
    )


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "inventory.yaml"
    path.write_text(SHIPPED.read_text())
    inv = Inventory.load(path)
    inv.remove("kirin970")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        inv.save(path)
    assert path.read_text() == SHIPPED.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["inventory.yaml"]  # no temp file left behind


def test_save_keeps_file_mode_and_follows_symlinks(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text(SHIPPED.read_text())
    real.chmod(0o640)
    link = tmp_path / "inventory.yaml"
    link.symlink_to(real)
    inv = Inventory.load(link)
    inv.remove("apple_m1")
    inv.save(link)
    assert link.is_symlink() and (real.stat().st_mode & 0o777) == 0o640
    assert "apple_m1" not in Inventory.load(real)


# -- default path ---------------------------------------------------------------------------------


def test_default_inventory_path(tmp_path, monkeypatch):
    monkeypatch.setenv("BIHOST_INVENTORY", str(tmp_path / "env.yaml"))
    assert default_inventory_path() == tmp_path / "env.yaml"
    monkeypatch.delenv("BIHOST_INVENTORY")
    monkeypatch.chdir(tmp_path)
    assert default_inventory_path().resolve() == SHIPPED.resolve()
    (tmp_path / "inventory.yaml").write_text("version: 1\nboards: {}\n")
    assert default_inventory_path() == Path("inventory.yaml")


# -- identity matching ----------------------------------------------------------------------------


def reported(machine: str, core_types: list[str], cpu_model: str = "", cores: int | None = None) -> dict:
    return {
        "machine": machine,
        "cpu_model": cpu_model,
        "core_types": core_types,
        "cores": cores if cores is not None else len(core_types),
    }


def test_kirin970_against_an_a53_only_board():
    kirin = Inventory.load(SHIPPED).get("kirin970")
    message = identity_mismatch(kirin, reported("aarch64", ["Cortex-A53"] * 4, "4x Cortex-A53"))
    assert message == "inventory says 4x Cortex-A73 + 4x Cortex-A53, agent reports 4x Cortex-A53"


def test_kirin970_matches_its_own_cores():
    kirin = Inventory.load(SHIPPED).get("kirin970")
    assert identity_mismatch(kirin, reported("aarch64", ["Cortex-A53"] * 4 + ["Cortex-A73"] * 4)) is None


def test_counts_must_match_too():
    kirin = Inventory.load(SHIPPED).get("kirin970")
    message = identity_mismatch(kirin, reported("aarch64", ["Cortex-A73"] * 2 + ["Cortex-A53"] * 4))
    assert (
        message == "inventory says 4x Cortex-A73 + 4x Cortex-A53, agent reports 2x Cortex-A73 + 4x Cortex-A53"
    )


def test_native_local_matches_an_x86_host():
    local = Inventory.load(SHIPPED).get("local")
    assert identity_mismatch(local, reported("x86_64", [], "Intel(R) Xeon(R) Platinum 8480+", 16)) is None
    assert expected_identity(local) == {}


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "AArch64"])
def test_arm64_accepts_aarch64_and_arm64(machine):
    assert identity_mismatch(Board("b", arch="arm64"), reported(machine, [])) is None


@pytest.mark.parametrize(
    "arch, machine, ok",
    [
        ("arm64", "x86_64", False),
        ("armv7", "armv7l", True),
        ("armv7", "armv8l", True),
        ("armv7", "aarch64", False),
        ("x86_64", "AMD64", True),
        ("x86_64", "aarch64", False),
    ],
)
def test_arch_against_machine(arch, machine, ok):
    message = identity_mismatch(Board("b", arch=arch), reported(machine, []))
    assert (message is None) == ok
    if not ok:
        assert (
            message.startswith(f"inventory says arch {arch} (")
            and f"agent reports machine {machine}" in message
        )


def test_kryo_cores_are_matched_by_the_arm_core_in_parentheses():
    sd855 = Inventory.load(SHIPPED).get("snapdragon855plus")
    assert expected_identity(sd855)["core_types"] == {"Cortex-A76": 4, "Cortex-A55": 4}
    assert identity_mismatch(sd855, reported("aarch64", ["Cortex-A55"] * 4 + ["Cortex-A76"] * 4)) is None


def test_no_core_types_reported_skips_the_core_check():
    kirin = Inventory.load(SHIPPED).get("kirin970")
    assert identity_mismatch(kirin, reported("aarch64", [], "Hisilicon Kirin970")) is None


def test_expected_adds_constraints():
    board = Board("b", arch="x86_64", expected={"cpu_model": "Xeon", "cores": 8})
    assert identity_mismatch(board, reported("x86_64", [], "Intel(R) Xeon(R) Gold", 8)) is None
    message = identity_mismatch(board, reported("aarch64", [], "AMD EPYC", 4))
    assert message is not None
    assert "agent reports machine aarch64" in message and "'Xeon'" in message and "expects 8 cores" in message


def test_tls_and_token_file_round_trip_and_validate(tmp_path):
    from bihost.inventory import Inventory, InventoryError

    path = tmp_path / "inv.yaml"
    path.write_text(
        "version: 1\nboards:\n  pi:\n    arch: arm64\n    address: 10.0.0.5:50051\n"
        "    tls: {ca: certs/ca.pem, cert: certs/host.pem, key: certs/host.key, server_name: pi.lab}\n"
        "    token_file: certs/pi.token\n"
    )
    inv = Inventory.load(path)
    board = inv.get("pi")
    assert (
        board.tls.ca == "certs/ca.pem"
        and board.tls.server_name == "pi.lab"
        and board.token_file == "certs/pi.token"
    )
    inv.save(path)
    assert Inventory.load(path).get("pi") == board
    for bad, match in (
        ("tls: {cert: a.pem, key: a.key}", "tls needs 'ca'"),
        ("tls: {ca: ca.pem, cert: a.pem}", "go together"),
        ("tls: {ca: ca.pem, password: x}", "password"),
        ("token_file: 5", "token_file"),
    ):
        path.write_text(f"version: 1\nboards:\n  pi:\n    address: 10.0.0.5:50051\n    {bad}\n")
        with pytest.raises(InventoryError, match=match):
            Inventory.load(path)


def test_security_for_resolves_paths_next_to_the_inventory(tmp_path):
    from bihost.errors import BoardError
    from bihost.inventory import Board, TlsSettings
    from bihost.targets import security_for

    (tmp_path / "pi.token").write_text("tok-" + "x" * 20 + "\n")
    board = Board("pi", address="10.0.0.5:1", tls=TlsSettings(ca="ca.pem"), token_file="pi.token")
    sec = security_for(board, tmp_path, insecure=False)
    assert sec.ca_file == str(tmp_path / "ca.pem") and sec.token == "tok-" + "x" * 20 and sec.tls
    with pytest.raises(BoardError, match="cannot read token_file"):
        security_for(Board("pi", address="10.0.0.5:1", token_file="missing"), tmp_path)
