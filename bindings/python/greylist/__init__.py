"""Email greylisting through libgreylist's C ABI, with ctypes.

>>> import greylist
>>> engine = greylist.Engine()
>>> v = engine.check("192.0.2.1", "alice@example.org", "bob@example.net", now=1_700_000_000)
>>> v.action, v.reason, v.retry_after
(<Action.DEFER: 1>, <Reason.NEW: 1>, 300)

An :class:`Engine` may be used from many threads at once: ctypes releases
the GIL during each call, and the library is thread-safe.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import enum
import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Union

__all__ = [
    "Action",
    "Engine",
    "Event",
    "EventKind",
    "LostMail",
    "GreylistError",
    "InvalidInputError",
    "KeyKind",
    "SnapshotError",
    "UnavailableError",
    "Reason",
    "Status",
    "Verdict",
    "abi_version",
    "library_path",
]

#: The C ABI this binding was written for (``GREYLIST_ABI_VERSION``).
ABI_VERSION = 1
_NOW = -(2**63)  # GREYLIST_NOW: the library reads the system clock


class _Named(enum.IntEnum):
    """An ``IntEnum`` that prints as its name (``Action.DEFER``) on every
    supported Python: 3.11 made ``str()`` of an ``IntEnum`` its number."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class Status(_Named):
    """``greylist_status`` codes."""

    OK = 0
    NULL_ARGUMENT = 1
    INVALID_ARGUMENT = 2
    IO = 3
    CORRUPT = 4
    PANIC = 5
    BUFFER_TOO_SMALL = 6
    INCOMPATIBLE = 7
    UNAVAILABLE = 8


class Action(_Named):
    """What the mail server should do."""

    PASS = 0
    DEFER = 1
    BLOCK = 2


class Reason(_Named):
    """Why the engine decided so."""

    NEW = 1
    EARLY_RETRY = 2
    RETRIED = 3
    PASSED = 4
    WHITELISTED = 5
    AUTO_WHITELISTED = 6
    BLOCKED = 7
    TRAPPED = 8
    STORE_UNAVAILABLE = 9


class EventKind(_Named):
    """What an :class:`Event` reports."""

    DEFERRED = 1
    PASSED = 2
    BLOCKED = 3
    #: A sweep judged a pending triplet lost mail (early retries, then no
    #: attempt for ``lost_after`` after its delay); ``count``: its early retries.
    LOST_MAIL = 4
    #: The old name of ``LOST_MAIL``.
    EXPIRED_UNRETRIED = 4
    #: A triplet judged lost passed on a late retry.
    RECOVERED = 5
    #: A network became blocked (reason ``BLOCKED``: blasting, ``count`` the
    #: early retries that set it off; ``TRAPPED``: a trap recipient).
    BLOCK_STARTED = 6
    #: A sweep found a network's block ended (``at``).
    BLOCK_ENDED = 7


#: What the client part of a check's key was (:attr:`Verdict.key`):
#: ``"network"``, the client's network (its address masked to the prefix);
#: ``"host-domain"``, the registrable domain of the client's verified host
#: name (``key_by_host_name``); ``"verified-domain"``, a sender domain the
#: MTA verified (``key_by_verified_domain``).
KeyKind = Literal["network", "host-domain", "verified-domain"]

# GREYLIST_KEY_* numbers (greylist_key_kind) to KeyKind.
_KEY_KINDS: Dict[int, KeyKind] = {1: "network", 2: "host-domain", 3: "verified-domain"}


@dataclass(frozen=True)
class Event:
    """Passed to the :meth:`Engine.on_event` callback."""

    kind: EventKind
    #: The client network ("192.0.2.0/24") or verified domain.
    network: str
    reason: Reason
    #: Unix seconds: the check's time, the lost triplet's last attempt, or
    #: the end of a block.
    at: int
    #: For ``LOST_MAIL`` and a blasting ``BLOCK_STARTED``: the triplet's
    #: early retries; else 0.
    count: int = 0


@dataclass(frozen=True)
class LostMail:
    """A row of :meth:`Engine.lost_mail_report`."""

    network: str
    count: int
    last_seen: int


class GreylistError(Exception):
    """A call into libgreylist failed; ``status`` says how, the message why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        try:
            self.status: Union[Status, int] = Status(status)
        except ValueError:
            self.status = status
        self.message = message


class SnapshotError(GreylistError):
    """A snapshot could not be read or written: ``status`` is ``IO``,
    ``CORRUPT`` (damaged, truncated, not a snapshot) or ``INCOMPATIBLE``
    (newer format, or other prefixes / extension delimiters)."""


class UnavailableError(GreylistError):
    """The shared store (Redis) did not answer an operator's call (release,
    forget, a report): nothing is known to have been done there."""


class InvalidInputError(GreylistError, ValueError):
    """Bad input (a malformed IP, ``None``, a non-str, an over-long string);
    the message names the argument."""


# --- loading the library -----------------------------------------------------

_LIB_NAMES = ("libgreylist.so", "libgreylist.dylib", "greylist.dll")
_CHECKOUT_NAMES = ("libgreylist_c.so", "libgreylist_c.dylib", "greylist_c.dll")


def _candidates() -> List[str]:
    here = Path(__file__).resolve().parent
    found: List[str] = []
    env = os.environ.get("GREYLIST_LIBRARY")
    if env:
        found.append(env)
    found += [str(here / name) for name in _LIB_NAMES]
    system = ctypes.util.find_library("greylist")
    if system:
        found.append(system)
    # Run from a checkout (not an installed copy): its cargo build of the C
    # ABI crate (`cargo build -p greylist-c`, which names it greylist_c).
    repo = here.parent.parent.parent  # bindings/python/greylist -> repository root
    if (repo / "Cargo.toml").is_file() and (repo / "include" / "greylist.h").is_file():
        for profile in ("release", "debug"):
            found += [str(repo / "target" / profile / name) for name in _CHECKOUT_NAMES]
    return found


def _load() -> ctypes.CDLL:
    tried: List[str] = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{path} (no such file)")
            continue
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({e})")
    if not ctypes.util.find_library("greylist"):
        tried.insert(1 if os.environ.get("GREYLIST_LIBRARY") else 0, "the system library path (not found)")
    raise ImportError(
        "greylist: cannot load libgreylist; set GREYLIST_LIBRARY to its path. Looked in:\n  "
        + "\n  ".join(tried)
    )


class _Verdict(ctypes.Structure):
    _fields_ = [
        ("action", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("retry_after", ctypes.c_uint32),
        ("delayed", ctypes.c_uint32),
    ]


_STAT_FIELDS = [
    "checks",
    "new_triplets",
    "early_retries",
    "retried",
    "passed",
    "whitelisted",
    "auto_whitelisted",
    "blocked",
    "expired",
    "evicted",
    "lost_mail",
    "entries",
    "clients",
    "trapped",
    "store_unavailable",
    "store_round_trips",
    "store_errors",
    "store_timeouts",
    "cache_hits",
    "clients_evicted",
    "store_malformed",
    "lost_recovered",
]


class _Stats(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32)] + [
        (name, ctypes.c_uint64) for name in _STAT_FIELDS
    ]


class _Request(ctypes.Structure):
    # greylist_request: append-only, its struct_size tells the library
    # which fields this binding knows.
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("client_ip", ctypes.c_char_p),
        ("sender", ctypes.c_char_p),
        ("recipient", ctypes.c_char_p),
        ("client_name", ctypes.c_char_p),
        ("helo", ctypes.c_char_p),
        ("verified_domain", ctypes.c_char_p),
        ("now", ctypes.c_int64),
        # NULL, or where the library writes a GREYLIST_KEY_* number.
        ("key_used", ctypes.POINTER(ctypes.c_uint32)),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("network", ctypes.c_char_p),
        ("at", ctypes.c_int64),
        ("count", ctypes.c_uint32),
    ]


class _LostMail(ctypes.Structure):
    _fields_ = [("network", ctypes.c_char * 256), ("count", ctypes.c_uint64), ("last_seen", ctypes.c_int64)]


class _ClientReport(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("network", ctypes.c_char * 64),
        ("pending", ctypes.c_uint64),
        ("passed", ctypes.c_uint64),
        ("lost_mail", ctypes.c_uint64),
        ("blocked_until", ctypes.c_int64),
        ("passes", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


_EVENT_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(_Event))
_LISTS = {"clients": 0, "senders": 1, "recipients": 2, "trap_recipients": 3}

_lib = _load()
_p = ctypes.c_void_p
_status = ctypes.c_uint32
_u32, _u64, _i64 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64
_str = ctypes.c_char_p
for _name, _restype, _argtypes in [
    ("greylist_version", _str, []),
    ("greylist_abi_version", _u32, []),
    ("greylist_status_str", _str, [_status]),
    ("greylist_last_error", ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t]),
    ("greylist_config_new", _p, []),
    ("greylist_config_free", None, [_p]),
    ("greylist_config_set_delay", _status, [_p, _u32]),
    ("greylist_config_set_retry_window", _status, [_p, _u32]),
    ("greylist_config_set_pass_ttl", _status, [_p, _u32]),
    ("greylist_config_set_awl_threshold", _status, [_p, _u32]),
    ("greylist_config_set_awl_ttl", _status, [_p, _u32]),
    ("greylist_config_set_blast", _status, [_p, _u32, _u32]),
    ("greylist_config_set_blast_copies", _status, [_p, _u32]),
    ("greylist_config_set_lost_after", _status, [_p, _u32]),
    ("greylist_config_set_max_entries", _status, [_p, _u64]),
    ("greylist_config_set_max_clients", _status, [_p, _u64]),
    ("greylist_config_set_prefixes", _status, [_p, ctypes.c_uint8, ctypes.c_uint8]),
    ("greylist_config_set_extension_delimiters", _status, [_p, _str]),
    ("greylist_config_set_reply", _status, [_p, ctypes.c_uint16, _str, _str]),
    ("greylist_config_set_snapshot", _status, [_p, _str, _u32]),
    ("greylist_config_set_key_by_verified_domain", _status, [_p, ctypes.c_bool]),
    ("greylist_config_set_key_by_host_name", _status, [_p, ctypes.c_bool]),
    ("greylist_config_set_redis", _status, [_p, _str]),
    ("greylist_config_set_redis_prefix", _status, [_p, _str]),
    ("greylist_config_set_redis_timeout_ms", _status, [_p, _u32]),
    ("greylist_config_set_redis_fail_defer", _status, [_p, ctypes.c_bool]),
    ("greylist_config_set_pass_cache", _status, [_p, _u32, _u32]),
    ("greylist_config_set_secret_file", _status, [_p, _str]),
    ("greylist_config_set_redis_ca_file", _status, [_p, _str]),
    ("greylist_engine_check_request", _status, [_p, ctypes.POINTER(_Request), ctypes.POINTER(_Verdict)]),
    ("greylist_engine_set_event_callback", _status, [_p, _EVENT_FN, ctypes.c_void_p]),
    ("greylist_engine_set_list", _status, [_p, _u32, ctypes.POINTER(_str), ctypes.c_size_t, ctypes.c_bool]),
    ("greylist_engine_load_list", _status, [_p, _u32, _str, ctypes.POINTER(ctypes.c_size_t)]),
    ("greylist_engine_lost_mail_report", _status, [_p, ctypes.POINTER(_LostMail), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    ("greylist_engine_client_report", _status, [_p, _str, _str, _i64, ctypes.POINTER(_ClientReport)]),
    ("greylist_engine_release", _status, [_p, _str, _str, _str, _i64]),
    ("greylist_engine_release_client", _status, [_p, _str, _i64, ctypes.POINTER(_u64)]),
    ("greylist_engine_forget", _status, [_p, _str, _str, _str, ctypes.POINTER(ctypes.c_bool)]),
    ("greylist_config_set_start_empty_if_corrupt", _status, [_p, ctypes.c_bool]),
    ("greylist_engine_new", _status, [_p, ctypes.POINTER(_p)]),
    ("greylist_engine_free", None, [_p]),
    ("greylist_engine_load", _status, [_p, _str, ctypes.POINTER(_p)]),
    ("greylist_engine_save", _status, [_p, _str]),
    ("greylist_engine_check", _status, [_p, _str, _str, _str, _i64, ctypes.POINTER(_Verdict)]),
    ("greylist_engine_sweep", _status, [_p, _i64, ctypes.POINTER(_u64)]),
    ("greylist_engine_len", _u64, [_p]),
    ("greylist_engine_stats", _status, [_p, ctypes.POINTER(_Stats)]),
    ("greylist_verdict_reply", _status, [_p, ctypes.POINTER(_Verdict), ctypes.c_char_p, ctypes.c_size_t]),
]:
    _fn = getattr(_lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes


def abi_version() -> int:
    """The ABI version of the loaded library."""
    return int(_lib.greylist_abi_version())


if abi_version() != ABI_VERSION:
    raise ImportError(
        f"greylist: the loaded libgreylist has ABI {abi_version()}, this binding needs ABI "
        f"{ABI_VERSION}; install matching versions"
    )

#: The library's version (the crate version in Cargo.toml).
__version__: str = _lib.greylist_version().decode()


def library_path() -> str:
    """Where the loaded library came from."""
    return str(_lib._name)


def _last_error() -> str:
    n = _lib.greylist_last_error(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    _lib.greylist_last_error(buf, n + 1)
    return buf.value.decode("utf-8", "replace")


def _check(status: int) -> None:
    """The one place a status becomes an exception."""
    if status == Status.OK:
        return
    if status in (Status.NULL_ARGUMENT, Status.INVALID_ARGUMENT):
        cls: type = InvalidInputError
    elif status in (Status.IO, Status.CORRUPT, Status.INCOMPATIBLE):
        cls = SnapshotError
    elif status == Status.UNAVAILABLE:
        cls = UnavailableError
    else:
        cls = GreylistError
    raise cls(status, _last_error())


def _arg(value: Optional[str], name: str) -> Optional[bytes]:
    """A str argument as UTF-8 bytes; ``None`` goes through as NULL so the
    library names it. Lone surrogates pass through for the library to refuse."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(Status.INVALID_ARGUMENT, f"{name}: expected str, got {type(value).__name__}")
    if "\0" in value:
        raise InvalidInputError(Status.INVALID_ARGUMENT, f"{name}: contains a NUL character")
    return value.encode("utf-8", "surrogatepass")


def _address(value: Union[str, bytes, None], name: str) -> Optional[bytes]:
    """An address or name from SMTP as bytes: ``bytes`` as they are, ``str``
    as UTF-8, with the surrogates of ``surrogateescape`` (how aiosmtpd and
    the email package keep bytes that are not UTF-8) turned back into those
    bytes. Any bytes are greylisted; only NUL is refused."""
    if isinstance(value, (bytes, bytearray)):
        if b"\0" in value:
            raise InvalidInputError(Status.INVALID_ARGUMENT, f"{name}: contains a NUL character")
        return bytes(value)
    arg = _arg(value, name)
    if arg is None or not isinstance(value, str):
        return arg
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return arg


def _now(now: Optional[float]) -> int:
    return _NOW if now is None else int(now)


PathLike = Union[str, "os.PathLike[str]"]


def _path(path: PathLike) -> bytes:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(Status.INVALID_ARGUMENT, f"path: expected str or PathLike, got {type(path).__name__}")
    return _arg(os.fspath(path), "path") or b""


class _Config:
    """A ``greylist_config`` built from keyword settings, freed on exit."""

    def __init__(self, **s: Any) -> None:
        unknown = set(s) - _SETTINGS
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        self.ptr: int = _lib.greylist_config_new()
        if not self.ptr:
            raise GreylistError(Status.PANIC, "greylist_config_new failed")
        try:
            self._apply(s)
        except BaseException:
            _lib.greylist_config_free(self.ptr)
            raise

    def _apply(self, s: Dict[str, Any]) -> None:
        c = self.ptr
        for name in ("delay", "retry_window", "pass_ttl", "awl_threshold", "awl_ttl", "max_entries", "max_clients",
                     "blast_copies", "lost_after"):
            if s.get(name) is not None:
                setter = getattr(_lib, f"greylist_config_set_{name}")
                _check(setter(c, _int(s[name], name, 2**64 - 1 if name.startswith("max_") else 2**32 - 1)))
        if s.get("ipv4_prefix") is not None or s.get("ipv6_prefix") is not None:
            v4, v6 = s.get("ipv4_prefix"), s.get("ipv6_prefix")
            _check(_lib.greylist_config_set_prefixes(
                c, 24 if v4 is None else _int(v4, "ipv4_prefix", 255), 64 if v6 is None else _int(v6, "ipv6_prefix", 255)
            ))
        if s.get("blast_threshold") is not None or s.get("block_time") is not None:
            rounds, seconds = s.get("blast_threshold"), s.get("block_time")
            _check(_lib.greylist_config_set_blast(
                c, 20 if rounds is None else _int(rounds, "blast_threshold"),
                3600 if seconds is None else _int(seconds, "block_time"),
            ))
        if s.get("extension_delimiters") is not None:
            _check(_lib.greylist_config_set_extension_delimiters(c, _arg(s["extension_delimiters"], "extension_delimiters")))
        if s.get("key_by_verified_domain") is not None:
            _check(_lib.greylist_config_set_key_by_verified_domain(c, bool(s["key_by_verified_domain"])))
        if s.get("key_by_host_name") is not None:
            _check(_lib.greylist_config_set_key_by_host_name(c, bool(s["key_by_host_name"])))
        if any(s.get(k) is not None for k in ("reply_code", "reply_enhanced", "greylist_text")):
            code, enhanced, text = s.get("reply_code"), s.get("reply_enhanced"), s.get("greylist_text")
            _check(_lib.greylist_config_set_reply(
                c,
                450 if code is None else _int(code, "reply_code", 65535),
                _arg("4.2.0" if enhanced is None else enhanced, "reply_enhanced"),
                _arg("Greylisted, please try again in %s seconds" if text is None else text, "greylist_text"),
            ))
        self._apply_redis(s)

    def _apply_redis(self, s: Dict[str, Any]) -> None:
        c = self.ptr
        if s.get("redis_secret") is not None:
            _check(_lib.greylist_config_set_secret_file(c, _path(s["redis_secret"])))
        if s.get("redis") is not None:
            _check(_lib.greylist_config_set_redis(c, _arg(s["redis"], "redis")))
        if s.get("redis_ca") is not None:
            _check(_lib.greylist_config_set_redis_ca_file(c, _path(s["redis_ca"])))
        if s.get("redis_prefix") is not None:
            _check(_lib.greylist_config_set_redis_prefix(c, _arg(s["redis_prefix"], "redis_prefix")))
        if s.get("redis_timeout_ms") is not None:
            _check(_lib.greylist_config_set_redis_timeout_ms(c, _int(s["redis_timeout_ms"], "redis_timeout_ms")))
        if s.get("redis_fail") is not None:
            if s["redis_fail"] not in ("open", "defer"):
                raise InvalidInputError(Status.INVALID_ARGUMENT, f"redis_fail: {s['redis_fail']!r} is not 'open' or 'defer'")
            _check(_lib.greylist_config_set_redis_fail_defer(c, s["redis_fail"] == "defer"))
        if s.get("pass_cache_entries") is not None or s.get("pass_cache_ttl") is not None:
            entries, ttl = s.get("pass_cache_entries"), s.get("pass_cache_ttl")
            _check(_lib.greylist_config_set_pass_cache(
                c, 100_000 if entries is None else _int(entries, "pass_cache_entries"),
                300 if ttl is None else _int(ttl, "pass_cache_ttl"),
            ))

    def __enter__(self) -> int:
        return self.ptr

    def __exit__(self, *exc: Any) -> None:
        _lib.greylist_config_free(self.ptr)


_SETTINGS = {
    "delay", "retry_window", "pass_ttl", "awl_threshold", "awl_ttl", "ipv4_prefix", "ipv6_prefix",
    "max_entries", "max_clients", "blast_threshold", "blast_copies", "block_time", "lost_after",
    "extension_delimiters", "reply_code",
    "reply_enhanced", "greylist_text", "key_by_verified_domain", "key_by_host_name", "redis", "redis_secret", "redis_ca",
    "redis_prefix", "redis_timeout_ms", "redis_fail", "pass_cache_entries", "pass_cache_ttl",
}


@dataclass(frozen=True)
class Verdict:
    """The engine's answer for one triplet."""

    action: Action
    reason: Reason
    #: Seconds until a retry would pass (defer) or the block ends (block).
    retry_after: int
    #: For ``Reason.RETRIED``: seconds since the first attempt.
    delayed: int
    #: The suggested SMTP reply for a defer or block, else ``None``.
    reply: Optional[str]
    #: What keyed the check in place of the client network, if anything:
    #: ``"host-domain"`` (the verified ``client_name``'s registrable domain),
    #: ``"verified-domain"`` (``verified_domain``), else ``"network"`` (also
    #: for a check with none of the optional attributes).
    key: KeyKind = "network"


class Engine:
    """A greylisting engine. Every argument is optional; ``None`` keeps the
    library's default (see the project README for the defaults)."""

    def __init__(
        self,
        delay: Optional[int] = None,
        retry_window: Optional[int] = None,
        pass_ttl: Optional[int] = None,
        awl_threshold: Optional[int] = None,
        ipv4_prefix: Optional[int] = None,
        ipv6_prefix: Optional[int] = None,
        max_entries: Optional[int] = None,
        *,
        snapshot: Optional[PathLike] = None,
        snapshot_interval: int = 0,
        start_empty_if_corrupt: bool = False,
        trap_recipients: Optional[List[str]] = None,
        **settings: Any,
    ) -> None:
        """Every argument is optional. With ``snapshot``, the engine loads
        that file if it exists, saves it every ``snapshot_interval`` seconds
        (0: never) from a background thread that also sweeps, and once more
        on :meth:`close`. Further keyword settings: ``awl_ttl``,
        ``blast_threshold``, ``blast_copies``, ``block_time``, ``lost_after``,
        ``extension_delimiters``,
        ``key_by_verified_domain`` (default off: a verified sender domain
        keys the triplet instead of the client network),
        ``key_by_host_name`` (default on: a verified, non-generic
        ``client_name`` keys it by its registrable domain, so
        ``mail-sor-f41.google.com`` and ``mail-yw1-f5.google.com`` are one
        client), ``reply_code``, ``reply_enhanced``,
        ``greylist_text``. ``trap_recipients``: addresses whose mail blocks
        the sending network at once.

        Several MX hosts share triplets through Redis with
        ``redis="redis://[:password@]host:6379/0"`` (``rediss://`` for TLS)
        and ``redis_secret=`` a file of 32 hex digits every host shares
        (``openssl rand -hex 16``); also ``redis_ca`` (a PEM file: the CA
        to trust for ``rediss://`` instead of the system's), ``redis_prefix`` (default
        ``"greylist:"``), ``redis_timeout_ms`` (50), ``redis_fail``
        (``"open"``, the default, or ``"defer"``), ``pass_cache_entries``
        (100000) and ``pass_cache_ttl`` (300 s). When Redis fails, verdicts
        have ``Reason.STORE_UNAVAILABLE``."""
        self._init(None)
        settings.update(
            delay=delay, retry_window=retry_window, pass_ttl=pass_ttl, awl_threshold=awl_threshold,
            ipv4_prefix=ipv4_prefix, ipv6_prefix=ipv6_prefix, max_entries=max_entries,
        )
        with _Config(**settings) as config:
            if snapshot is not None:
                _check(_lib.greylist_config_set_snapshot(config, _path(snapshot), _int(snapshot_interval, "snapshot_interval")))
                _check(_lib.greylist_config_set_start_empty_if_corrupt(config, bool(start_empty_if_corrupt)))
            handle = _p()
            _check(_lib.greylist_engine_new(config, ctypes.byref(handle)))
            self._handle = handle.value
        if trap_recipients:
            self._set_list("trap_recipients", trap_recipients, replace=True)

    def _init(self, handle: Optional[int]) -> None:
        self._callback: Any = None
        self._handle = handle
        self._active = 0
        self._cond = threading.Condition()

    @classmethod
    def load(cls, path: PathLike, **settings: Any) -> "Engine":
        """A new engine from the snapshot at ``path``, with ``settings`` as
        for the constructor. Raises :class:`SnapshotError` for an unreadable,
        damaged, newer or differently-keyed file; nothing is half-loaded."""
        engine = cls.__new__(cls)
        engine._init(None)
        with _Config(**settings) as config:
            handle = _p()
            _check(_lib.greylist_engine_load(config, _path(path), ctypes.byref(handle)))
        engine._handle = handle.value
        return engine

    def save(self, path: PathLike) -> None:
        """Writes a crash-safe snapshot to ``path`` (checks in other threads
        keep running). Raises :class:`SnapshotError` on failure."""
        encoded = _path(path)
        handle = self._enter()
        try:
            _check(_lib.greylist_engine_save(handle, encoded))
        finally:
            self._leave()

    # -- lifetime ---------------------------------------------------------

    def _enter(self) -> int:
        """Pins the handle for one call, so close() waits for running calls
        instead of freeing the engine under them."""
        with self._cond:
            if self._handle is None:
                raise GreylistError(Status.NULL_ARGUMENT, "engine: is closed")
            self._active += 1
            return self._handle

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    def close(self) -> None:
        """Frees the engine (writing the final snapshot, when one is
        configured); waits for calls running in other threads. Later calls
        raise :class:`GreylistError`. Closing twice is harmless."""
        with self._cond:
            handle, self._handle = self._handle, None
            while self._active:
                self._cond.wait()
        if handle is not None:
            _lib.greylist_engine_free(handle)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()

    # -- greylisting ------------------------------------------------------

    def check(
        self,
        client_ip: str,
        sender: Union[str, bytes],
        recipient: Union[str, bytes],
        now: Optional[float] = None,
        client_name: Union[str, bytes, None] = None,
        helo: Union[str, bytes, None] = None,
        verified_domain: Union[str, bytes, None] = None,
    ) -> Verdict:
        """Decides one triplet and records the attempt. ``sender`` is ``""``
        or ``"<>"`` for the null sender; ``now`` is Unix seconds (``None``:
        the system clock). Addresses may be ``str`` or ``bytes``: one that is
        not UTF-8 (a ``surrogateescape`` str, or raw bytes) or longer than
        1 KiB is keyed by its bytes and greylisted like any other.
        ``client_name`` is the host name the MTA verified (matched against
        host-name whitelist entries; with ``key_by_host_name``, the default,
        its registrable domain replaces the client network in the key unless
        the name is generic: it carries the client's address, or a word such
        as ``dsl``, ``dyn`` or ``pool``); ``helo`` never decides (it is
        unverified); ``verified_domain`` is a sender domain the MTA verified
        (SPF/DKIM), which replaces the client network in the key when
        ``key_by_verified_domain`` is on. The verdict's :attr:`Verdict.key`
        says which keyed the check. An unusable optional attribute is
        ignored."""
        args = (_arg(client_ip, "client_ip"), _address(sender, "sender"), _address(recipient, "recipient"))
        extended = (client_name, helo, verified_domain) != (None, None, None)
        key_used = ctypes.c_uint32(1)  # GREYLIST_KEY_NETWORK: what a bare triplet is keyed by
        if extended:
            request = _Request(ctypes.sizeof(_Request), *args, _address(client_name, "client_name"),
                               _address(helo, "helo"), _address(verified_domain, "verified_domain"),
                               _now(now), ctypes.pointer(key_used))
        raw = _Verdict()
        handle = self._enter()
        try:
            if extended:
                _check(_lib.greylist_engine_check_request(handle, ctypes.byref(request), ctypes.byref(raw)))
            else:
                _check(_lib.greylist_engine_check(handle, *args, _now(now), ctypes.byref(raw)))
            reply = None
            if raw.action != Action.PASS:
                buf = ctypes.create_string_buffer(640)
                _check(_lib.greylist_verdict_reply(handle, ctypes.byref(raw), buf, len(buf)))
                reply = buf.value.decode("utf-8", "replace")
        finally:
            self._leave()
        # A kind newer than this binding (numbers are never reused) is
        # reported as the network rather than failing the check.
        key = _KEY_KINDS.get(key_used.value, "network")
        return Verdict(Action(raw.action), Reason(raw.reason), raw.retry_after, raw.delayed, reply, key)

    async def acheck(
        self,
        client_ip: str,
        sender: Union[str, bytes],
        recipient: Union[str, bytes],
        now: Optional[float] = None,
        client_name: Union[str, bytes, None] = None,
        helo: Union[str, bytes, None] = None,
        verified_domain: Union[str, bytes, None] = None,
    ) -> Verdict:
        """:meth:`check` for asyncio code (an aiosmtpd handler, say): the call
        runs on the loop's default executor, so a check that waits (on Redis,
        up to its timeout) never holds up the event loop."""
        call = functools.partial(self.check, client_ip, sender, recipient, now, client_name, helo, verified_domain)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    # -- lists ------------------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        """Calls ``fn(handle, *args)`` with the handle pinned, raising on failure."""
        handle = self._enter()
        try:
            _check(fn(handle, *args))
        finally:
            self._leave()

    def _set_list(self, kind: str, entries: List[str], replace: bool) -> None:
        if isinstance(entries, str):
            raise InvalidInputError(Status.INVALID_ARGUMENT, f"{kind}: expected a list of str, got one str")
        encoded = [_arg(e, f"{kind}[{i}]") for i, e in enumerate(entries)]
        array = (ctypes.c_char_p * max(1, len(encoded)))(*encoded)
        self._call(_lib.greylist_engine_set_list, _LISTS[kind], array, len(encoded), replace)

    def whitelist(
        self,
        clients: Optional[List[str]] = None,
        senders: Optional[List[str]] = None,
        recipients: Optional[List[str]] = None,
    ) -> None:
        """Adds entries to the static whitelists: ``clients`` are IPs, CIDRs
        and host names (``.google.com``); ``senders`` and ``recipients`` are
        addresses, domains and local parts (``postmaster@``). A bad entry
        raises :class:`InvalidInputError` naming it and changes nothing."""
        for kind, entries in (("clients", clients), ("senders", senders), ("recipients", recipients)):
            if entries:
                self._set_list(kind, entries, replace=False)

    def set_list(self, kind: str, entries: List[str]) -> None:
        """Replaces one list (``"clients"``, ``"senders"``, ``"recipients"``
        or ``"trap_recipients"``)."""
        self._set_list(_list_kind(kind), entries, replace=True)

    def load_whitelist(self, path: PathLike, kind: str = "clients") -> int:
        """Replaces one list with a file's entries (one a line, ``#``
        comments) and returns how many there were. A bad line raises
        :class:`InvalidInputError` (a ``ValueError``) with its number, and
        nothing of the file is applied."""
        loaded = ctypes.c_size_t()
        self._call(_lib.greylist_engine_load_list, _LISTS[_list_kind(kind)], _path(path), ctypes.byref(loaded))
        return int(loaded.value)

    # -- an operator's calls ----------------------------------------------

    def lost_mail_report(self, limit: int = 10) -> List[LostMail]:
        """The client networks whose mail was most likely lost, worst first:
        those with the most triplets that expired having seen only early
        retries (a sender that retried within seconds and gave up)."""
        rows = (_LostMail * max(1, _int(limit, "limit")))()
        count = ctypes.c_size_t()
        self._call(_lib.greylist_engine_lost_mail_report, rows, limit, ctypes.byref(count))
        return [LostMail(r.network.decode(), int(r.count), int(r.last_seen)) for r in rows[: count.value]]

    def client_state(self, client_ip: str, client_name: Optional[str] = None, now: Optional[float] = None) -> Dict[str, Any]:
        """What the engine knows of ``client_ip``'s network: ``network``,
        ``pending``, ``passed``, ``passes``, ``whitelisted``,
        ``auto_whitelisted``, ``blocked_until`` (Unix seconds or ``None``)
        and ``lost_mail``. Scans the table: an operator's call."""
        r = _ClientReport(struct_size=ctypes.sizeof(_ClientReport))
        self._call(_lib.greylist_engine_client_report, _arg(client_ip, "client_ip"),
                   _arg(client_name, "client_name"), _now(now), ctypes.byref(r))
        return {
            "network": r.network.decode(),
            "pending": int(r.pending),
            "passed": int(r.passed),
            "passes": int(r.passes),
            "whitelisted": bool(r.flags & 1),
            "auto_whitelisted": bool(r.flags & 2),
            "blocked_until": int(r.blocked_until) if r.flags & 4 else None,
            "lost_mail": int(r.lost_mail),
        }

    def release(self, client_ip: str, sender: Union[str, bytes], recipient: Union[str, bytes],
                now: Optional[float] = None) -> None:
        """Lets a triplet pass from now on."""
        self._call(_lib.greylist_engine_release, _arg(client_ip, "client_ip"), _address(sender, "sender"),
                   _address(recipient, "recipient"), _now(now))

    def release_client(self, client_ip: str, now: Optional[float] = None) -> int:
        """Lifts a block on ``client_ip``'s network and lets its waiting
        triplets pass; returns how many were released."""
        released = _u64()
        self._call(_lib.greylist_engine_release_client, _arg(client_ip, "client_ip"), _now(now), ctypes.byref(released))
        return int(released.value)

    def forget(self, client_ip: str, sender: Union[str, bytes], recipient: Union[str, bytes]) -> bool:
        """Forgets a triplet (its next attempt is new); returns whether it was known."""
        found = ctypes.c_bool()
        self._call(_lib.greylist_engine_forget, _arg(client_ip, "client_ip"), _address(sender, "sender"),
                   _address(recipient, "recipient"), ctypes.byref(found))
        return bool(found.value)

    def on_event(self, callback: Optional[Callable[[Event], None]]) -> None:
        """Calls ``callback(Event)`` for every verdict and every expired
        unretried triplet, on the thread that made the check or sweep (the
        GIL is taken for the call only; the engine holds no lock). ``None``
        removes it. Exceptions in the callback are printed and ignored.

        When this returns, the previous callback has finished every call on
        every thread and is never called again. It waits for those calls
        (with the GIL released), so a callback must not call it: from
        inside a callback it raises ``InvalidInputError``."""
        trampoline = _EVENT_FN()
        if callback is not None:

            def deliver(_user: Any, event: Any) -> None:
                e = event.contents
                callback(Event(EventKind(e.kind), e.network.decode(), Reason(e.reason), int(e.at), int(e.count)))

            trampoline = _EVENT_FN(deliver)
        # The old trampoline stays referenced until the library has waited
        # for its calls in flight; only then may it be freed.
        self._call(_lib.greylist_engine_set_event_callback, trampoline, None)
        self._callback = trampoline if callback is not None else None

    def sweep(self, now: Optional[float] = None) -> int:
        """Removes expired entries; returns how many triplet entries went."""
        removed = _u64()
        handle = self._enter()
        try:
            _check(_lib.greylist_engine_sweep(handle, _now(now), ctypes.byref(removed)))
        finally:
            self._leave()
        return int(removed.value)

    def __len__(self) -> int:
        handle = self._enter()
        try:
            return int(_lib.greylist_engine_len(handle))
        finally:
            self._leave()

    def stats(self) -> Dict[str, int]:
        """The engine's counters (checks, per-reason counts, entries, ...)."""
        raw = _Stats(struct_size=ctypes.sizeof(_Stats))
        handle = self._enter()
        try:
            _check(_lib.greylist_engine_stats(handle, ctypes.byref(raw)))
        finally:
            self._leave()
        return {name: int(getattr(raw, name)) for name in _STAT_FIELDS}


def _list_kind(kind: str) -> str:
    if kind not in _LISTS:
        raise InvalidInputError(Status.INVALID_ARGUMENT, f"kind: {kind!r} is not one of {', '.join(_LISTS)}")
    return kind


def _int(value: Any, name: str, limit: int = 2**32 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(Status.INVALID_ARGUMENT, f"{name}: expected int, got {type(value).__name__}")
    if not 0 <= value <= limit:
        raise InvalidInputError(Status.INVALID_ARGUMENT, f"{name}: {value} is out of range 0..{limit}")
    return value
