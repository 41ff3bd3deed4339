"""The board inventory (`inventory.yaml`): schema, validation, atomic saving, identity matching.

Boards are frozen dataclasses that validate themselves, so a bad entry fails the same way
whether it came from YAML or from `bihost board add`: one `InventoryError` naming the board
and the key. The agent's measured identity is matched against an entry here, so a result is
never filed under a chip the agent is not running on.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from biagent.runtimes import list_runtimes

from .errors import UserError

VERSION = 1
ARCHES = ("arm64", "armv7", "x86_64", "native")
TRANSPORTS = ("grpc", "ssh")
EMBEDDED = "embedded"  # address of the board served by an agent the host starts itself
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
CLUSTER_RE = re.compile(r"^(\d+)x\s+(.+?)(?:\s*@\s*(\d+(?:\.\d+)?))?$")  # "4x Cortex-A73 @ 2.36"
MACHINES = {
    "arm64": ("aarch64", "arm64"),
    "armv7": ("armv7l", "armv7", "armv8l"),
    "x86_64": ("x86_64", "amd64"),
}
BOARD_KEYS = (
    "soc",
    "arch",
    "os",
    "cpu",
    "runtimes",
    "address",
    "transport",
    "ssh",
    "tls",
    "token_file",
    "description",
    "expected",
    "emulated",
)
SSH_KEYS = ("host", "port", "user", "key_file", "known_hosts_file", "agent_dir")
TLS_KEYS = ("ca", "cert", "key", "server_name")
EXPECTED_KEYS = ("machine", "cpu_model", "core_types", "cores")


class InventoryError(UserError):
    """A bad inventory file or entry; the message names the file, the board and the key."""

    def __init__(
        self, message: str, *, board: str | None = None, key: str | None = None, source: str | None = None
    ):
        self.detail, self.board, self.key, self.source = message, board, key, source
        prefix = (f"{source}: " if source else "") + (f"board {board!r}: " if board is not None else "")
        super().__init__(prefix + message)

    def within(self, source: str) -> InventoryError:
        return InventoryError(self.detail, board=self.board, key=self.key, source=source)


class UnknownBoard(InventoryError):
    """A board name that is not in the inventory; the message lists the known names."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown board {name!r} (known boards: {', '.join(known) or '(none)'})", key="name")
        self.board, self.known = name, known


@dataclass(frozen=True)
class SshSettings:
    """How to reach a board over SSH (used by the SSH transport); every field is optional."""

    host: str | None = None  # None: the host part of the board's address
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts_file: str | None = None
    agent_dir: str | None = None  # where `board bootstrap` installs the agent (default ~/.bibench-agent)


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the board's agent: the CA that signed it, our client certificate for mutual TLS,
    and the name in its certificate when that is not the address's host. Relative paths are
    relative to the inventory file."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class Board:
    """One inventory entry. `address` None means the board's agent is not registered yet."""

    name: str
    soc: str = ""
    arch: str = "native"  # native: whatever the agent runs on (the embedded `local` board)
    os: str = ""
    cpu_clusters: list[str] = field(default_factory=list)  # "4x Cortex-A73 @ 2.36", big first
    runtimes: list[str] = field(default_factory=list)
    address: str | None = None  # "HOST:PORT", "[v6]:PORT", "embedded" or None
    transport: str = "grpc"
    ssh: SshSettings | None = None
    tls: TlsSettings | None = None
    token_file: str | None = None  # the agent's bearer token lives in this file (never in the inventory)
    description: str = ""
    expected: dict[str, Any] = field(default_factory=dict)  # extra identity constraints, EXPECTED_KEYS
    # its CPU is emulated (qemu-user on an x86 host: `bihost board emulate`): its rows are marked
    # emulated and never feed a ratio, a score, a figure or a dashboard
    emulated: bool = False

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not NAME_RE.match(name):
            hint = "" if isinstance(name, str) else " (quote it in YAML)"
            raise InventoryError(
                f"invalid board name{hint}: use lowercase letters, digits, '_', '.', '-' "
                "(at most 63, starting with a letter or digit)",
                board=str(name),
                key="name",
            )
        for key in ("soc", "os", "description"):
            _need(name, key, getattr(self, key), str, "a string")
        _choice(name, "arch", self.arch, ARCHES)
        _choice(name, "transport", self.transport, TRANSPORTS)
        _need(name, "emulated", self.emulated, bool, "true or false")
        if self.emulated and self.arch not in MACHINES:
            raise InventoryError(
                f"an emulated board names the architecture it emulates ({', '.join(MACHINES)}), not {self.arch!r}",
                board=name,
                key="arch",
            )
        object.__setattr__(self, "cpu_clusters", _str_list(name, "cpu.clusters", self.cpu_clusters))
        for i, cluster in enumerate(self.cpu_clusters):
            if not CLUSTER_RE.match(cluster.strip()):
                raise InventoryError(
                    f"cpu.clusters[{i}] {cluster!r} is not 'Nx CORE @ GHz'", board=name, key="cpu"
                )
        object.__setattr__(self, "runtimes", _str_list(name, "runtimes", self.runtimes))
        for rt in self.runtimes:
            # the agent's registry, BIAGENT_RUNTIMES plugins included (read now, not at import)
            _choice(name, "runtimes", rt, tuple(list_runtimes()), what="runtime")
        if self.address is not None:
            _need(name, "address", self.address, str, "a string HOST:PORT")
            if self.address != EMBEDDED:
                parse_address(self.address, board=name)
        if self.ssh is not None:
            _need(name, "ssh", self.ssh, SshSettings, "a mapping")
            for key, value in asdict(self.ssh).items():
                if value is not None:
                    _need(
                        name,
                        f"ssh.{key}",
                        value,
                        int if key == "port" else str,
                        "an integer" if key == "port" else "a string",
                    )
            if not 1 <= self.ssh.port <= 65535:
                raise InventoryError(
                    f"ssh.port {self.ssh.port} out of range (1-65535)", board=name, key="ssh.port"
                )
        if self.tls is not None:
            _need(name, "tls", self.tls, TlsSettings, "a mapping")
            for key, value in asdict(self.tls).items():
                if value is not None or key == "ca":
                    _need(name, f"tls.{key}", value, str, "a string")
            if (self.tls.cert is None) != (self.tls.key is None):
                raise InventoryError(
                    "tls.cert and tls.key go together (the client certificate for mutual TLS)",
                    board=name,
                    key="tls",
                )
        if self.token_file is not None:
            _need(name, "token_file", self.token_file, str, "a path")
        expected = dict(_mapping(name, "expected", self.expected, EXPECTED_KEYS))
        if isinstance(expected.get("machine"), str):
            expected["machine"] = [expected["machine"]]
        for key in ("machine", "core_types"):
            if key in expected:
                expected[key] = _str_list(name, f"expected.{key}", expected[key])
        for key, typ, what in (("cpu_model", str, "a string"), ("cores", int, "an integer")):
            if key in expected:
                _need(name, f"expected.{key}", expected[key], typ, what)
        object.__setattr__(self, "expected", expected)

    @classmethod
    def from_dict(cls, name: str, data: Any) -> Board:
        """A board from its YAML mapping; unknown keys are errors, not silently ignored typos."""
        data = _mapping(str(name), "", data, BOARD_KEYS)
        cpu = _mapping(str(name), "cpu", _get(data, "cpu", {}), ("clusters",))
        ssh = data.get("ssh")
        if ssh is not None:
            ssh = SshSettings(
                **{k: v for k, v in _mapping(str(name), "ssh", ssh, SSH_KEYS).items() if v is not None}
            )
        tls = data.get("tls")
        if tls is not None:
            tls = _mapping(str(name), "tls", tls, TLS_KEYS)
            if "ca" not in tls:
                raise InventoryError(
                    "tls needs 'ca' (the CA that signed the agent's certificate)",
                    board=str(name),
                    key="tls.ca",
                )
            tls = TlsSettings(**tls)
        return cls(
            name=name,
            soc=_get(data, "soc", ""),
            arch=_get(data, "arch", "native"),
            os=_get(data, "os", ""),
            cpu_clusters=_get(cpu, "clusters", []),
            runtimes=_get(data, "runtimes", []),
            address=data.get("address"),
            transport=_get(data, "transport", "grpc"),
            ssh=ssh,
            tls=tls,
            token_file=data.get("token_file"),
            description=_get(data, "description", ""),
            expected=_get(data, "expected", {}),
            emulated=_get(data, "emulated", False),
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping (without the name); optional fields only when set, `address` always."""
        out: dict[str, Any] = {"soc": self.soc, "arch": self.arch, "os": self.os}
        if self.cpu_clusters:
            out["cpu"] = {"clusters": list(self.cpu_clusters)}
        out.update(runtimes=list(self.runtimes), address=self.address)
        if self.transport != "grpc":
            out["transport"] = self.transport
        if self.ssh is not None:
            out["ssh"] = {k: v for k, v in asdict(self.ssh).items() if v is not None}
        if self.tls is not None:
            out["tls"] = {k: v for k, v in asdict(self.tls).items() if v is not None}
        if self.token_file is not None:
            out["token_file"] = self.token_file
        if self.description:
            out["description"] = self.description
        if self.expected:
            out["expected"] = dict(self.expected)
        if self.emulated:
            out["emulated"] = True
        return out


def parse_address(address: str, *, board: str | None = None) -> tuple[str, int]:
    """(host, port) from "HOST:PORT" or "[v6]:PORT"; a bare IPv6 address is ambiguous, so refused."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)", address) or re.fullmatch(r"([A-Za-z0-9_.-]+):(\d+)", address)
    if m and address.startswith("["):
        try:
            ipaddress.IPv6Address(m.group(1).split("%")[0])
        except ValueError:
            m = None
    if not m:
        raise InventoryError(
            f"address {address!r} is not HOST:PORT (or [IPv6]:PORT, or '{EMBEDDED}')",
            board=board,
            key="address",
        )
    if not 1 <= int(m.group(2)) <= 65535:
        raise InventoryError(f"port {int(m.group(2))} out of range (1-65535)", board=board, key="address")
    return m.group(1), int(m.group(2))


def _get(data: dict, key: str, default: Any) -> Any:
    value = data.get(key)
    return default if value is None else value


def _mapping(board: str, key: str, data: Any, keys: tuple[str, ...]) -> dict:
    """`data` checked to be a mapping of known `keys`; `key` is its dotted name ("" for the entry)."""
    if not isinstance(data, dict):
        raise InventoryError(
            f"{key or 'entry'} must be a mapping, not {data!r}", board=board, key=key or None
        )
    prefix = f"{key}." if key else ""
    for k in data:
        if k not in keys:
            raise InventoryError(
                f"unknown key '{prefix}{k}' (known keys: {', '.join(keys)})", board=board, key=f"{prefix}{k}"
            )
    return data


def _need(board: str, key: str, value: Any, typ: type, what: str) -> None:
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):  # YAML `yes` is no port
        raise InventoryError(f"{key} must be {what}, not {value!r}", board=board, key=key)


def _choice(board: str, key: str, value: Any, allowed: tuple[str, ...], what: str = "") -> None:
    if value not in allowed:
        raise InventoryError(
            f"{key}: unknown {what or key} {value!r} (known: {', '.join(allowed)})", board=board, key=key
        )


def _str_list(board: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InventoryError(f"{key} must be a list of strings, not {value!r}", board=board, key=key)
    return list(value)


@dataclass
class Inventory:
    """Boards by name, in file order, plus the file's leading comment block (kept on save)."""

    by_name: dict[str, Board] = field(default_factory=dict)
    header: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Inventory:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InventoryError("no such inventory file", source=source) from None
        except OSError as exc:
            raise InventoryError(f"cannot read: {exc.strerror}", source=source) from None
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except InventoryError as exc:
            raise exc.within(source) from None
        except yaml.YAMLError as exc:  # one line: where, and what the parser expected
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InventoryError(
                f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}", source=source
            ) from None
        if not isinstance(data, dict):
            raise InventoryError("must be a mapping with 'version: 1' and 'boards'", source=source)
        for key in data:
            if key not in ("version", "boards"):
                raise InventoryError(
                    f"unknown top-level key {key!r} (known keys: version, boards)", source=source
                )
        version = data.get("version")
        if version != VERSION or isinstance(version, bool):
            problem = "missing 'version'" if version is None else f"version {version!r} is not supported"
            raise InventoryError(
                f"{problem}: this host reads inventory format 'version: {VERSION}'", source=source
            )
        boards = data.get("boards") or {}
        if not isinstance(boards, dict):
            raise InventoryError("'boards' must be a mapping of board name to entry", source=source)
        inv = cls(header=_header(text))
        try:
            for name, entry in boards.items():
                inv.add(Board.from_dict(name, entry))
        except InventoryError as exc:
            raise exc.within(source) from None
        return inv

    def dumps(self) -> str:
        """The file text: header, version, then one block per board separated by blank lines."""
        blocks = [
            yaml.dump(
                {b.name: b.to_dict()},
                Dumper=_Dumper,
                sort_keys=False,
                default_flow_style=None,
                width=1000,
                allow_unicode=True,
            )
            for b in self.by_name.values()
        ]
        body = "".join("\n" + _indent(block) for block in blocks).lstrip("\n") if blocks else "  {}\n"
        return f"{self.header}version: {VERSION}\nboards:\n{body}"

    @classmethod
    @contextlib.contextmanager
    def editing(cls, path: str | Path) -> Iterator[Inventory]:
        """Load, let the caller change, and save, holding an exclusive lock for the whole edit:
        two `bihost board add` at once each see the other's change (no lost update). The lock is
        a sibling file, since `save` replaces the inventory's own inode."""
        target = Path(os.path.realpath(path))
        lock_path = target.parent / f".{target.name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            inv = cls.load(path)
            yield inv
            inv.save(path)
        finally:
            os.close(fd)

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file in the same directory, fsync, rename): a crash or a full
        disk leaves the old file intact, and a reader never sees half an inventory."""
        target = Path(os.path.realpath(path))
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.dumps())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # make the rename durable; not every OS opens directories
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def boards(self) -> list[Board]:
        return list(self.by_name.values())

    def names(self) -> list[str]:
        return list(self.by_name)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def get(self, name: str) -> Board:
        try:
            return self.by_name[name]
        except KeyError:
            raise UnknownBoard(name, self.names()) from None

    def add(self, board: Board) -> None:
        if board.name in self.by_name:
            raise InventoryError(f"duplicate board name {board.name!r}", key="name")
        self.by_name[board.name] = board

    def replace(self, board: Board) -> None:
        """Swap an existing entry in place (its position in the file is kept)."""
        self.get(board.name)
        self.by_name[board.name] = board

    def remove(self, name: str) -> Board:
        board = self.get(name)
        del self.by_name[name]
        return board


def default_inventory_path() -> Path:
    """$BIHOST_INVENTORY, else ./inventory.yaml, else the repository's shipped inventory."""
    env = os.environ.get("BIHOST_INVENTORY")
    if env:
        return Path(env)
    for candidate in (Path("inventory.yaml"), Path(__file__).resolve().parents[2] / "inventory.yaml"):
        if candidate.is_file():
            return candidate
    raise UserError(
        "no inventory found: pass --inventory FILE, set BIHOST_INVENTORY, or create ./inventory.yaml"
    )


def expected_identity(board: Board) -> dict[str, Any]:
    """What the agent must report for `board`: accepted `machine`s (absent for arch native),
    `core_types` as ordered counts (when clusters are listed), plus the entry's `expected`."""
    out: dict[str, Any] = {}
    if board.arch in MACHINES:
        out["machine"] = list(MACHINES[board.arch])
    if board.cpu_clusters:
        counts: Counter[str] = Counter()
        for cluster in board.cpu_clusters:
            n, core, _ = CLUSTER_RE.match(cluster.strip()).groups()  # type: ignore[union-attr]
            inner = re.search(
                r"\(([^)]+)\)", core
            )  # "Kryo 485 Gold (Cortex-A76)": the agent sees the ARM core
            counts[(inner.group(1) if inner else core).strip()] += int(n)
        out["core_types"] = dict(counts)
    for key, value in board.expected.items():
        out[key] = dict(Counter(value)) if key == "core_types" else value
    return out


def identity_mismatch(board: Board, reported: dict[str, Any]) -> str | None:
    """None when the agent's `reported` identity fits the entry, else what disagrees, in words."""
    want, problems = expected_identity(board), []
    machine = str(reported.get("machine") or "")
    if "machine" in want and machine and machine.lower() not in [m.lower() for m in want["machine"]]:
        problems.append(
            f"inventory says arch {board.arch} ({' or '.join(want['machine'])}), "
            f"agent reports machine {machine}"
        )
    core_types = list(reported.get("core_types") or [])
    if "core_types" in want and core_types:
        have = Counter(core_types)
        if {k.lower(): v for k, v in want["core_types"].items()} != {k.lower(): v for k, v in have.items()}:
            problems.append(f"inventory says {_counts(want['core_types'])}, agent reports {_counts(have)}")
    model = str(reported.get("cpu_model") or "")
    if "cpu_model" in want and want["cpu_model"].lower() not in model.lower():
        problems.append(
            f"inventory expects a CPU model containing {want['cpu_model']!r}, agent reports {model!r}"
        )
    if "cores" in want and reported.get("cores") is not None and reported["cores"] != want["cores"]:
        problems.append(f"inventory expects {want['cores']} cores, agent reports {reported['cores']}")
    return "; ".join(problems) or None


def _counts(counts: dict[str, int]) -> str:
    return " + ".join(f"{n}x {core}" for core, n in counts.items())


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_duplicates(node, ())
        return super().construct_document(node)


def _check_duplicates(node: yaml.Node, path: tuple[str, ...]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _check_duplicates(child, path)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            line = key.start_mark.line + 1
            if key.value in seen:
                at = f"at line {line} (first at line {seen[key.value]})"
                if path == ("boards",):
                    raise InventoryError(f"duplicate board name {key.value!r} {at}", key="name")
                board = path[1] if len(path) >= 2 and path[0] == "boards" else None
                dotted = ".".join([*path[2:], key.value]) if board else ".".join([*path, key.value])
                raise InventoryError(f"duplicate key {dotted!r} {at}", board=board, key=dotted)
            seen[key.value] = line
        _check_duplicates(value, (*path, str(key.value)) if isinstance(key, yaml.ScalarNode) else path)


def _header(text: str) -> str:
    """The leading comment block (comment and blank lines before the first YAML line)."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def _indent(block: str) -> str:
    return "".join(f"  {line}" if line.strip() else line for line in block.splitlines(keepends=True))


class _Dumper(yaml.SafeDumper):
    """Flow style for `cpu: {clusters: [...]}`, quoted cluster strings: the shipped file's look."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = True if set(data) == {"clusters"} else None  # None: flow only when all values are scalars
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    nodes = dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
    for item in nodes.value:
        if isinstance(item, yaml.ScalarNode) and CLUSTER_RE.match(item.value) and " " in item.value:
            item.style = '"'
    return nodes


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)
